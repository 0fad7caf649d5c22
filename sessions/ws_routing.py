"""WebSocket routes (API.md, WebSocket terminal)."""

from django.urls import path, re_path

from .consumers import NoRouteConsumer, TerminalConsumer

websocket_urlpatterns = [
    path("ws/v1/sessions/<str:session_id>/", TerminalConsumer.as_asgi()),
    # Any other path: closed with 4404 (without it Channels fails the handshake with a 500).
    re_path(r"", NoRouteConsumer.as_asgi()),
]
