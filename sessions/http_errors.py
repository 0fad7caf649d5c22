"""Django's error pages, in JSON under /api/ (a client of the API never gets an HTML page)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views import defaults


def _api(request) -> bool:
    return request.path.startswith("/api/")


def handler404(request, exception=None):
    if _api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if _api(request):
        return JsonResponse({"detail": "Internal error; the session carries on. It has been logged."}, status=500)
    return defaults.server_error(request)
