"""The browser pages: your sessions (list, create, end) and the terminal. Thin, like the API views.

Login and logout are Django's own views (vterm_project/urls.py); the terminal itself
talks to the WebSocket (sessions/consumers.py) from sessions/static/vterm/terminal.js.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework.exceptions import APIException, ValidationError

from . import audit, selectors, services
from .serializers import SessionCreateSerializer, SessionSerializer

LIST_LIMIT = 100


def _errors_text(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_errors_text(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_errors_text(v) for v in detail)
    return str(detail)


@login_required
@require_http_methods(["GET", "POST"])
async def session_list(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    if request.method == "POST":
        ser = SessionCreateSerializer(data={"name": request.POST.get("name", "")})
        try:
            ser.is_valid(raise_exception=True)
            session = await services.session_create(owner=user, **ser.validated_data,
                                                    remote_addr=audit.request_addr(request), via="page")
        except (ValidationError, APIException) as exc:
            await sync_to_async(messages.error)(request, f"Could not create the session: {_errors_text(exc.detail)}")
            return redirect("page-sessions")
        return redirect("page-terminal", session_id=session.pk)

    def rows() -> list[dict]:
        qs = selectors.session_list_for_user(user).filter(owner=user)[:LIST_LIMIT]
        return [SessionSerializer(s).data for s in qs]
    # Rendering touches the lazy user and the messages (the database): not on the event loop.
    return await sync_to_async(render)(request, "vterm/sessions.html", {"sessions": await sync_to_async(rows)()})


@login_required
@require_POST
async def session_end(request: HttpRequest, session_id) -> HttpResponse:
    user = await request.auser()

    def end() -> None:
        services.session_terminate(selectors.session_get_for_user(user, session_id), by=user,
                                   remote_addr=audit.request_addr(request), via="page")
    await sync_to_async(end)()
    await sync_to_async(messages.info)(request, "The session is ending.")
    return redirect("page-sessions")


@login_required
async def terminal(request: HttpRequest, session_id) -> HttpResponse:
    user = await request.auser()
    session = await sync_to_async(selectors.session_get_for_user)(user, session_id)  # foreign: 404
    data = await sync_to_async(lambda: SessionSerializer(session).data)()
    return await sync_to_async(render)(request, "vterm/terminal.html", {"session": data})
