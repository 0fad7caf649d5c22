"""Django's own middleware (settings.MIDDLEWARE), run for a request answered in front of Django.

The hot command route (sessions/command_route.py) skips Django's handler, whose cost is
mostly a thread hop per middleware and DRF's request cycle, but not what the middleware
does: the ALLOWED_HOSTS check (CommonMiddleware), the security headers (SecurityMiddleware,
XFrameOptionsMiddleware), django-prometheus' HTTP series, and whatever is added to
MIDDLEWARE later. This calls each middleware's hooks directly, in Django's order and with
Django's rules (BaseHandler and MiddlewareMixin): process_request in order, a response
returned (or an exception raised) there answering at once, then process_view with the
resolved view, and process_response in reverse order. So each of those concerns is
written once, in Django's settings and middleware, whichever road serves the request.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.exception import response_for_exception
from django.urls import resolve
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string


def _never_called(request):
    raise AssertionError("the middleware's hooks are called one by one, never the chain")


class MiddlewareRun:
    def __init__(self) -> None:
        self.middleware = []
        for path in settings.MIDDLEWARE:
            mw = import_string(path)(_never_called)
            # A middleware that does its work in __call__ cannot be run hook by hook: refuse to
            # start rather than answer without it.
            if not isinstance(mw, MiddlewareMixin) or type(mw).__call__ is not MiddlewareMixin.__call__:
                raise ImproperlyConfigured(f"{path} is not a hooks-only MiddlewareMixin: "
                                           "the hot command route (VTERM_COMMAND_ROUTE) cannot run it")
            self.middleware.append(mw)

    def request(self, request):
        """Django's request phase: None to go on to the view, or the finished answer a middleware
        gave by itself (e.g. 400 for a Host not in ALLOWED_HOSTS)."""
        for i, mw in enumerate(self.middleware):
            try:
                response = mw.process_request(request) if hasattr(mw, "process_request") else None
            except Exception as exc:  # noqa: BLE001 (Django answers it around that middleware)
                return self._respond(i - 1, request, response_for_exception(request, exc))
            if response is not None:
                return self._respond(i, request, response)
        match = request.resolver_match = resolve(request.path_info)
        for mw in self.middleware:
            if hasattr(mw, "process_view"):
                response = mw.process_view(request, match.func, match.args, match.kwargs)
                if response is not None:
                    return self.response(request, response)
        return None

    def response(self, request, response):
        """Django's response phase for the view's answer: process_response, innermost first."""
        return self._respond(len(self.middleware) - 1, request, response)

    def exception(self, request, exc: Exception):
        """Django's answer to an exception the view did not handle: process_exception, innermost
        first, else Django's error response (which then goes through ``response``)."""
        for mw in reversed(self.middleware):
            if hasattr(mw, "process_exception") and (response := mw.process_exception(request, exc)) is not None:
                return response
        return response_for_exception(request, exc)

    def _respond(self, last: int, request, response):
        for mw in reversed(self.middleware[:last + 1]):
            if hasattr(mw, "process_response"):
                response = mw.process_response(request, response)
        return response
