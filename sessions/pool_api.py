"""GET /api/v1/backends/ and GET /api/v1/pool/ (API.md, staff only): thin views over sessions/pool.py."""

from __future__ import annotations

from typing import ClassVar

from adrf.views import APIView
from asgiref.sync import sync_to_async
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from .pool import BackendPool, backend_as_dict, pool_state
from .serializers import BackendSerializer, PoolSerializer


class BackendListView(APIView):
    permission_classes: ClassVar = [IsAdminUser]

    @extend_schema(responses=BackendSerializer(many=True))
    async def get(self, request):
        state = await sync_to_async(pool_state)()
        return Response([backend_as_dict(b) for b in state.backends])


class PoolView(APIView):
    permission_classes: ClassVar = [IsAdminUser]

    @extend_schema(responses=PoolSerializer)
    async def get(self, request):
        return Response(await sync_to_async(lambda: BackendPool().as_dict())())
