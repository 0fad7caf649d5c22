"""ASGI entry point: HTTP through Django (static files included), WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vterm_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

application = ProtocolTypeRouter({
    # Only /static/ goes to the static handler; everything else passes straight through.
    "http": ASGIStaticFilesHandler(django_asgi_app),
})
