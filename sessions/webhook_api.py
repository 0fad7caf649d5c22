"""GET/POST /api/v1/webhooks/secret/ (docs/api.md, Webhooks): the user's signing secret, and its rotation."""

from __future__ import annotations

from adrf.views import APIView
from asgiref.sync import sync_to_async
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from . import audit, webhooks


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_ and the key in base64 (Standard Webhooks)")
    created_at = serializers.DateTimeField()


class WebhookSecretView(APIView):
    @extend_schema(responses=WebhookSecretSerializer)
    async def get(self, request):
        """The secret the user's webhooks are signed with (made on first use)."""
        secret = await sync_to_async(webhooks.secret_get)(request.user)
        return Response(WebhookSecretSerializer(secret).data)

    @extend_schema(request=None, responses=WebhookSecretSerializer)
    async def post(self, request):
        """A new secret: every delivery from now on, retries too, is signed with it alone."""
        def rotate():
            secret = webhooks.secret_rotate(request.user)
            audit.audit_record(request.user, audit.WEBHOOK_SECRET_ROTATE, request=request)
            return WebhookSecretSerializer(secret).data
        return Response(await sync_to_async(rotate)())
