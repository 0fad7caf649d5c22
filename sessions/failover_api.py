"""POST /api/v1/backends/{id}/drain/ (staff): move a backend's sessions away, stop placing there."""

from __future__ import annotations

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from . import failover
from .models import Backend, TerminalSession


class BackendDrainView(APIView):
    permission_classes = (IsAdminUser,)

    @extend_schema(request=None, responses={202: inline_serializer("BackendDrain", {
        "id": serializers.CharField(), "status": serializers.CharField(), "sessions": serializers.IntegerField()})})
    async def post(self, request, backend_id):
        def drain():
            backend = get_object_or_404(Backend, pk=backend_id)
            live = backend.sessions.filter(status__in=TerminalSession.LIVE).count()
            failover.backend_drain(backend, by=f"requested by {request.user.username}")
            return {"id": backend.pk, "status": backend.status, "sessions": live}
        return Response(await sync_to_async(drain)(), status=status.HTTP_202_ACCEPTED)
