"""WebSocket routes (API.md, WebSocket terminal)."""

from django.urls import path

from .consumers import TerminalConsumer

websocket_urlpatterns = [
    path("ws/v1/sessions/<str:session_id>/", TerminalConsumer.as_asgi()),
]
