"""Static files over ASGI: Django's handler, where a path that escapes the static root is a 404.

``GET /static/../metrics`` makes Django's finders raise SuspiciousFileOperation, which the
handler does not catch: a 500 with a traceback in the log for every such request. What a
client sent is never a 500 (API.md): it is a file that is not there.
"""

from __future__ import annotations

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404


class StaticFilesHandler(ASGIStaticFilesHandler):
    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousFileOperation as exc:
            raise Http404("No such file.") from exc
