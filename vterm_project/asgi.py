"""ASGI entry point: HTTP through Django (static files included), WebSockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vterm_project.settings")
django_asgi_app = get_asgi_application()  # sets Django up

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings

from sessions.command_route import CommandRoute
from sessions.ws_auth import BearerTokenAuthMiddleware, SameOriginValidator
from sessions.ws_routing import websocket_urlpatterns
from vterm_project.asgi_handler import PooledSyncThreadASGIHandler
from vterm_project.body_limit import RequestBodyLimit
from vterm_project.static_files import StaticFilesHandler

# Long-lived sync threads instead of one per request (asgi_handler.py, sync_threads.py).
django_asgi_app = PooledSyncThreadASGIHandler()

http_app = StaticFilesHandler(django_asgi_app)
# POST …/commands/ with a Bearer token, served without Django's request cycle (sessions/command_route.py);
# VTERM_COMMAND_ROUTE=0 leaves it to the DRF view, for comparison.
if settings.VTERM["COMMAND_ROUTE"]:
    http_app = CommandRoute(http_app)

# Everything loaded so far lives as long as the process: out of the garbage collector's scans, whose
# full passes over it paused requests for 50-100 ms (docs/bench.md).
gc.freeze()

application = ProtocolTypeRouter({
    # Only /static/ goes to the static handler; everything else passes straight through.
    # A body over DATA_UPLOAD_MAX_MEMORY_SIZE is answered 413 before Django reads it.
    "http": RequestBodyLimit(http_app),
    # Cookie (browser) or Bearer header (programs); an Origin of another scheme, host or port is refused.
    "websocket": SameOriginValidator(
        AuthMiddlewareStack(BearerTokenAuthMiddleware(URLRouter(websocket_urlpatterns)))),
})
