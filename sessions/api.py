"""REST API of API.md. Views are thin: validate, authorize (selectors), call services.

They are async (adrf) so that a request waiting on a shell holds no thread; the
ORM steps go through sync_to_async.
"""

from __future__ import annotations

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from . import audit, selectors, services
from .api_schema import IDEMPOTENCY_PARAMETER
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import idempotency_key_parse
from .pagination import StrictPageNumberPagination
from .recording import VERSIONS, recording_lines_for
from .serializers import (
    CommandCreateSerializer,
    CommandSerializer,
    InputSerializer,
    ResizeSerializer,
    ScreenSerializer,
    SessionCreateSerializer,
    SessionSerializer,
)


def _valid(serializer_class, request):
    ser = serializer_class(data=request.data)
    ser.is_valid(raise_exception=True)
    return ser.validated_data


def _paginated(request, view, queryset, serializer_class):
    paginator = StrictPageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


class SessionListView(APIView):
    pagination_class = StrictPageNumberPagination  # for the schema: the list is a DRF page
    @extend_schema(responses=SessionSerializer(many=True))
    async def get(self, request):
        def build():
            return _paginated(request, self, selectors.session_list_for_user(request.user), SessionSerializer)
        return await sync_to_async(build)()

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionSerializer},
                   parameters=[IDEMPOTENCY_PARAMETER])
    async def post(self, request):
        key = idempotency_key_parse(request.headers.get(IDEMPOTENCY_HEADER))
        data = _valid(SessionCreateSerializer, request)
        session, answered = await services.session_submit(owner=request.user, **data, idempotency_key=key,
                                                          remote_addr=audit.request_addr(request))
        return Response(SessionSerializer(session).data, status=answered)


class SessionDetailView(APIView):
    @extend_schema(responses=SessionSerializer)
    async def get(self, request, session_id):
        session = await sync_to_async(selectors.session_get_for_user)(request.user, session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(responses={204: None})
    async def delete(self, request, session_id):
        def end():
            session = selectors.session_get_for_user(request.user, session_id)
            services.session_terminate(session, by=request.user, remote_addr=audit.request_addr(request))
        await sync_to_async(end)()
        return Response(status=status.HTTP_204_NO_CONTENT)


class CommandListView(APIView):
    pagination_class = StrictPageNumberPagination
    @extend_schema(responses=CommandSerializer(many=True))
    async def get(self, request, session_id):
        def build():
            session = selectors.session_get_for_user(request.user, session_id)
            return _paginated(request, self, selectors.command_list(session), CommandSerializer)
        return await sync_to_async(build)()

    @extend_schema(request=CommandCreateSerializer, responses={201: CommandSerializer},
                   parameters=[IDEMPOTENCY_PARAMETER])
    async def post(self, request, session_id):
        key = idempotency_key_parse(request.headers.get(IDEMPOTENCY_HEADER))
        data = _valid(CommandCreateSerializer, request)

        # The same calls as the hot route's (sessions/command_route.py), which serves most of these.
        wait = data.get("wait") or 0
        sub = await sync_to_async(services.command_submit)(
            request.user, session_id, command=data["command"], timeout=data.get("timeout"),
            idle_timeout=data.get("idle_timeout"), notify_url=data.get("notify_url"), wait=wait,
            remote_addr=audit.request_addr(request), idempotency_key=key)
        try:
            body = await services.command_wait(sub.cmd, wait) if wait else services.command_json(sub.cmd)
        finally:
            await services.command_submit_end(sub)
        return Response(body, status=sub.status)


class CommandDetailView(APIView):
    @extend_schema(responses=CommandSerializer)
    async def get(self, request, session_id, command_id):
        def read():
            session = selectors.session_get_for_user(request.user, session_id)
            return CommandSerializer(selectors.command_get(session, command_id)).data
        return Response(await sync_to_async(read)())


class CommandOutputView(APIView):
    @extend_schema(parameters=[OpenApiParameter("raw", bool, description="the raw terminal bytes")],
                   responses={(200, "text/plain"): str, (200, "application/octet-stream"): bytes})
    async def get(self, request, session_id, command_id):
        def read():
            session = selectors.session_get_for_user(request.user, session_id)
            return selectors.command_get(session, command_id)
        raw = request.query_params.get("raw", "0").lower()
        if raw not in ("1", "true", "yes", "0", "false", "no"):
            raise ValidationError({"raw": ["Must be one of 1, true, yes, 0, false, no."]})
        cmd = await sync_to_async(read)()
        if raw in ("1", "true", "yes"):
            return HttpResponse(bytes(cmd.output_raw), content_type="application/octet-stream")
        return HttpResponse(cmd.output, content_type="text/plain; charset=utf-8")


class CommandInterruptView(APIView):
    @extend_schema(request=None, responses={202: CommandSerializer})
    async def post(self, request, session_id, command_id):
        def interrupt():
            session = selectors.session_get_for_user(request.user, session_id)
            cmd = selectors.command_get(session, command_id)
            services.command_interrupt(cmd)
            audit.audit_record(request.user, audit.COMMAND_INTERRUPT, session.pk, request=request,
                               detail={"command_id": str(cmd.pk)})
            return CommandSerializer(cmd).data
        return Response(await sync_to_async(interrupt)(), status=status.HTTP_202_ACCEPTED)


class SessionInputView(APIView):
    @extend_schema(request=InputSerializer,
                   responses={202: inline_serializer("InputAccepted", {"accepted": serializers.BooleanField()})})
    async def post(self, request, session_id):
        data = _valid(InputSerializer, request)

        def send():
            session = selectors.session_get_for_user(request.user, session_id)
            services.session_input(session, data=data.get("data"), keys=data.get("keys"))
            audit.audit_record(request.user, audit.SESSION_INPUT, session.pk, request=request,
                               detail=audit.audit_input_detail(data.get("data"), data.get("keys")))
        await sync_to_async(send)()
        return Response({"accepted": True}, status=status.HTTP_202_ACCEPTED)


class SessionScreenView(APIView):
    @extend_schema(responses=ScreenSerializer)
    async def get(self, request, session_id):
        session = await sync_to_async(selectors.session_get_for_user)(request.user, session_id)
        return Response(await services.session_screen_read(session))


class SessionResizeView(APIView):
    @extend_schema(request=ResizeSerializer, responses=SessionSerializer)
    async def post(self, request, session_id):
        data = _valid(ResizeSerializer, request)

        def resize():
            session = selectors.session_get_for_user(request.user, session_id)
            body = SessionSerializer(services.session_resize(session, **data)).data
            audit.audit_record(request.user, audit.SESSION_RESIZE, session.pk, request=request, detail=data)
            return body
        return Response(await sync_to_async(resize)())


class SessionRecordingView(APIView):
    """The session's output as an asciicast file (``asciinema play`` plays it): v2, or v3 with command markers."""

    @extend_schema(parameters=[OpenApiParameter(
                       "version", int, enum=list(VERSIONS), default=2,
                       description="asciicast version: 2, or 3 (with a marker where each command started, and an "
                                   "exit event once the session has ended)")],
                   responses={(200, "application/x-asciicast"): str})
    async def get(self, request, session_id):
        version = request.query_params.get("version", "2")
        if version not in [str(v) for v in VERSIONS]:
            raise ValidationError({"version": [f"Must be one of {', '.join(map(str, VERSIONS))}."]})

        def read():
            session = selectors.session_get_for_user(request.user, session_id)
            services.session_recording_open(session)
            audit.audit_record(request.user, audit.SESSION_RECORDING, session.pk, request=request)
            return session
        session = await sync_to_async(read)()
        response = StreamingHttpResponse(recording_lines_for(session, int(version)),
                                         content_type="application/x-asciicast")
        response["Content-Disposition"] = f'attachment; filename="vterm-{session.pk}.cast"'
        return response
