"""The WebSocket terminal of API.md: `/ws/v1/sessions/{id}/`.

Thin: frames are validated with the serializers and handed to services. What this
file does own is the delivery of one session's numbered output to one viewer: live
frames from the channel-layer group, replay and gap-mending from the Redis stream,
snapshots when frames are gone, and flow control (sessions/ws_flow.py). See
docs/websocket.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from typing import ClassVar
from urllib.parse import parse_qs

import orjson
from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.db import aclose_old_connections
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException, ValidationError

from vterm_project import hop_trace

from . import audit, metrics, selectors, services
from .models import Command
from .ratelimit import ws_claim, ws_release
from .redis_state import command_done_key, session_group
from .serializers import SessionSerializer
from .waits import reply_wait
from .ws_flow import AckBeyondSent, OutputWindow
from .ws_serializers import (
    AckFrameSerializer,
    InputSerializer,
    ResizeSerializer,
    RunFrameSerializer,
    plain_input,
)
from .ws_watch import ws_unwatch, ws_watch

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429  # the user has VTERM_WS_MAX_PER_USER WebSockets open already
CLOSE_TOO_LARGE = 1009
PUMP_BATCH = 64  # stream entries read per XRANGE while catching up
# A command frame carries at most this much of the command's output (a WebSocket message
# must stay well under Daphne's 1 MiB); "output_cut": true says it was cut.
COMMAND_OUTPUT_MAX = 64 * 1024
TOUCH_EVERY = 10.0  # seconds between last_activity writes while someone types
# A `run` frame's result is awaited on the command's reply list, as the REST route does, for this
# long; after that (or for commands others ran) it comes with the session's command events.
RESULT_WAIT = 60.0
FINAL_KEEP = 1000  # command ids whose final frame went out, to drop the later copy of it
# Client frames handled with no database work (on_input's occasional touch makes its own check).
NO_DATABASE_FRAMES = frozenset({"input", "ack", "ping"})
ACK_SEQ_MAX = 2**63 - 1  # seqs are a Redis stream id's first part


def _errors_text(detail) -> str:
    """DRF error detail as one line that names the fields: "cols: Ensure this value ..."."""
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_errors_text(v)}" if k != "non_field_errors" else _errors_text(v)
                         for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_errors_text(v) for v in detail)
    return str(detail)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """A WebSocket path that is no session's: closed like a missing session."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class TerminalConsumer(AsyncWebsocketConsumer):
    session = None
    _claimed = False

    # -- connection ------------------------------------------------------------------

    async def connect(self) -> None:
        # Accept first: a close code (4401/4404) can only be sent on an open WebSocket.
        await self.accept()
        metrics.websocket_opened()
        self._counted = True
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        try:
            uuid.UUID(self.session_id)
            self.session = await sync_to_async(selectors.session_get_for_user)(user, self.session_id)
        except (ValueError, Http404):  # not an id at all, or no such session of yours
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.session_id = str(self.session.pk)
        if not await self._claim():
            return
        await self._audit(audit.SESSION_ATTACH)
        cfg = settings.VTERM
        self.window = OutputWindow(high=cfg["WS_WINDOW_HIGH"], low=cfg["WS_WINDOW_LOW"], skip=cfg["WS_SKIP_AFTER"])
        self._touched_at = 0.0
        self.refs: dict[str, str] = {}  # command id -> the client's ref, for commands it ran
        self._final_sent: OrderedDict[str, None] = OrderedDict()
        self._waiters: set[asyncio.Task] = set()
        self.group = session_group(self.session_id)
        # Join before reading the stream: a frame written meanwhile arrives live (deduplicated by seq).
        await self.channel_layer.group_add(self.group, self.channel_name)
        since, since_error = self._since()
        latest = await services.output_last_seq(self.session_id)
        self.window.start(0, latest)
        await self.send_json({
            "type": "hello", "session": await self._session_json(), "seq": latest,
            "flow": {"high": self.window.high, "low": self.window.low},
        })
        if since_error:
            await self.send_error("bad_since", since_error)
        if since is not None and since <= latest:
            self.window.start(since, latest)
            await self._pump()
        else:
            await self._send_snapshot(fallback_seq=latest)

    async def _claim(self) -> bool:
        """One of the user's places for an open WebSocket (sessions/ratelimit.py); without one,
        an error frame that says so and close 4429. Then the connection is re-checked every few
        seconds (sessions/ws_watch.py)."""
        try:
            cap = await ws_claim(self.user.pk, self.channel_name)
        except RedisError as exc:
            # Unchecked, not refused: without Redis the connection fails at its next step anyway.
            log.warning("could not claim a WebSocket place for user %s: %s", self.user.pk, exc)
            ws_watch(self)
            return True
        if cap:
            self.session = None  # nothing to leave on disconnect
            await self.send_error("too_many_connections", f"You have {cap} WebSockets open, the most allowed per "
                                                          "user (VTERM_WS_MAX_PER_USER); close one first.")
            await self.close(code=CLOSE_TOO_MANY)
            return False
        self._claimed = True
        ws_watch(self)
        return True

    def credentials(self) -> tuple[int, str | None, str | None]:
        """What this connection was opened with (sessions/ws_watch.py re-checks it)."""
        token = self.scope.get("auth_token")
        session = self.scope.get("session")
        return self.user.pk, token or None, None if token else getattr(session, "session_key", None)

    async def revoked(self) -> None:
        """The user may no longer come in (inactive, token deleted, logged out): close 4401."""
        ws_unwatch(self)
        await self.send_error("revoked", "This connection's credentials are no longer valid (the user was "
                                         "deactivated, or the token or login ended).")
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _audit(self, action: str, detail: dict | None = None) -> None:
        client = self.scope.get("client") or ("", 0)
        await sync_to_async(audit.audit_record)(self.user, action, self.session_id, remote_addr=str(client[0]),
                                                detail={"via": "websocket", **(detail or {})})

    async def disconnect(self, code) -> None:
        for task in getattr(self, "_waiters", ()):
            task.cancel()
        ws_unwatch(self)
        if self._claimed:
            self._claimed = False
            try:
                await ws_release(self.user.pk, self.channel_name)
            except RedisError:
                pass  # the claim lapses by itself (VTERM_WS_CLAIM_SECONDS)
        if getattr(self, "_counted", False):
            self._counted = False
            metrics.websocket_closed()
        if self.session is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    def _since(self) -> tuple[int | None, str]:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("since")
        if not values:
            return None, ""
        raw = values[-1]
        if not raw.isdigit() or len(raw) > 18:
            return None, f"since must be a whole number of 0 or more, not {raw[:40]!r}; sent a snapshot instead."
        return int(raw), ""

    @sync_to_async
    def _session_json(self) -> dict:
        return dict(SessionSerializer(self.session).data)

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    async def dispatch(self, message: dict) -> None:
        """Channels closes stale database connections before every message, a hop to the sync thread
        and back (about a third of what the web added to a keystroke's echo). Keystrokes, acks and
        output frames touch no database: for them it is done only where a frame does (``receive``)."""
        if message["type"] in ("websocket.receive", "output.frame"):
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    # -- client frames ----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        hop_trace.mark("web.frame")
        if self.session is None:
            return
        if text_data is None:
            await self.send_error("bad_frame", "Binary frames are not understood; send JSON text frames.")
            return
        if len(text_data) > settings.VTERM["WS_MAX_FRAME"]:
            try:
                await self.close(code=CLOSE_TOO_LARGE)
            except Exception:  # noqa: BLE001 (autobahn raises a bare Exception)
                # Daphne (autobahn) refuses to send 1009 from the application; it sends 1009 itself
                # for frames over its --websocket_max_message_size (1 MiB). Between the two: 4009.
                await self.close(code=4009)
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            await self.send_error("bad_json", "The frame is not JSON.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_error("bad_frame", 'A frame is a JSON object with a string "type".')
            return
        kind = frame["type"]
        if kind not in NO_DATABASE_FRAMES:
            await aclose_old_connections()
        handler = self.FRAME_HANDLERS.get(kind)
        if handler is None:
            await self.send_error("unknown_type", f"Unknown frame type {kind[:40]!r}; expected one of "
                                                  f"{', '.join(sorted(self.FRAME_HANDLERS))}.")
            return
        try:
            await handler(self, frame)
        except ValidationError as exc:
            await self.send_error("invalid", f"{kind}: {_errors_text(exc.detail)}")
        except APIException as exc:  # Conflict (session not live), ServiceUnavailable
            code = exc.get_codes()
            await self.send_error(code if isinstance(code, str) else "error", f"{kind}: {_errors_text(exc.detail)}")
        except Http404:
            await self.send_error("not_found", f"{kind}: the session no longer exists.")
        except RedisError:
            await self.send_error("unavailable", f"{kind}: the session store (Redis) is unavailable.")
        except Exception:
            log.exception("websocket %s frame failed on session %s", kind, self.session_id)
            await self.send_error("internal", f"{kind}: failed; the session carries on.")

    @staticmethod
    def _valid(serializer_class, frame: dict) -> dict:
        ser = serializer_class(data={k: v for k, v in frame.items() if k != "type"})
        ser.is_valid(raise_exception=True)
        return ser.validated_data

    async def on_input(self, frame: dict) -> None:
        text = plain_input(frame)
        data = {"data": text} if text is not None else self._valid(InputSerializer, frame)
        # On the loop, no thread: keystrokes wait on no one's database work.
        await services.session_input_ws(self.session, data=data.get("data"), keys=data.get("keys"))
        hop_trace.mark("web.input_pushed")
        now = time.monotonic()
        if now - self._touched_at > TOUCH_EVERY:
            self._touched_at = now
            await aclose_old_connections()
            await sync_to_async(services.session_touch)(self.session)

    async def on_resize(self, frame: dict) -> None:
        data = self._valid(ResizeSerializer, frame)
        await sync_to_async(services.session_resize)(self.session, **data)
        await self._audit(audit.SESSION_RESIZE, dict(data))

    async def on_run(self, frame: dict) -> None:
        data = self._valid(RunFrameSerializer, frame)

        client = self.scope.get("client") or ("", 0)

        def submit() -> tuple[dict, str | None]:
            cmd, wait_id = services.command_create(self.user, self.session_id, command=data["command"],
                                                   timeout=data.get("timeout"),
                                                   idle_timeout=data.get("idle_timeout"),
                                                   notify_url=data.get("notify_url"), wait=RESULT_WAIT,
                                                   remote_addr=str(client[0]), via="websocket")
            return services.command_json(cmd), wait_id
        body, wait_id = await sync_to_async(submit)()
        ref = data.get("ref")
        if ref is not None:
            self.refs[body["id"]] = ref
        # The client learns the command's id at once; later frames follow its state.
        await self._send_command(body)
        task = asyncio.create_task(self._await_result(body["id"], wait_id))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def _await_result(self, command_id: str, wait_id: str | None) -> None:
        """The end of a command this client ran, straight from its reply list (the worker pushes
        it there before the channel layer carries it to every viewer, a few ms later)."""
        try:
            got = await reply_wait(command_done_key(command_id), RESULT_WAIT)
        except (RedisError, TimeoutError):
            return  # the command event still comes through the channel layer
        finally:
            await services.command_wait_end(self.user.pk, wait_id)
        if got:
            await self._send_command(json.loads(got))

    async def on_interrupt(self, frame: dict) -> None:
        await sync_to_async(services.session_interrupt)(self.session)
        await self._audit(audit.COMMAND_INTERRUPT)

    async def on_ack(self, frame: dict) -> None:
        seq = frame.get("seq")
        # One per output frame: a plain int in range skips DRF (~45 us); anything else gets its named error.
        if type(seq) is not int or not 0 <= seq <= ACK_SEQ_MAX:
            seq = self._valid(AckFrameSerializer, frame)["seq"]
        try:
            self.window.ack(seq)
        except AckBeyondSent as exc:  # acking ahead would unpause a viewer that never reads
            raise ValidationError({"seq": [str(exc)]}) from exc
        await self._pump()

    async def on_ping(self, frame: dict) -> None:
        await self.send_json({"type": "pong"})

    FRAME_HANDLERS: ClassVar[dict] = {"input": on_input, "resize": on_resize, "run": on_run, "interrupt": on_interrupt,
                      "ack": on_ack, "ping": on_ping}

    # -- output -----------------------------------------------------------------------

    async def _send_output(self, seq: int, data: str) -> None:
        # The frame that carries the bytes: orjson writes it ~15x faster than json.dumps (the same JSON
        # less the blanks between items; the text is valid UTF-8, decoded with "replace").
        await self.send(text_data=orjson.dumps({"type": "output", "seq": seq, "data": data}).decode())
        self.window.record_sent(seq, len(data))

    async def _pump(self) -> None:
        """Send what the window allows from the stream, up to the newest frame known."""
        w = self.window
        while w.behind and not w.paused:
            if w.too_far_behind:
                await self._send_snapshot(fallback_seq=w.sent)
                return
            frames = await services.output_frames(self.session_id, after=w.sent, upto=w.latest, count=PUMP_BATCH)
            if not frames or frames[0][0] != w.sent + 1:
                # Trimmed from the stream (or never written): the screen stands in for them.
                await self._send_snapshot(fallback_seq=frames[0][0] - 1 if frames else w.latest)
                return
            for seq, data in frames:
                await self._send_output(seq, data)
                if w.paused:
                    return

    async def _send_snapshot(self, *, fallback_seq: int) -> None:
        try:
            snap = await services.session_snapshot(self.session)
        except (APIException, RedisError) as exc:
            # No screen to capture (session over, backend away): continue from what the stream has.
            log.info("no snapshot for %s: %s", self.session_id, exc)
            snap = {"lines": [], "seq": fallback_seq}
        size = sum(len(line) for line in snap["lines"])
        await self.send_json({"type": "snapshot", **snap})
        self.window.record_snapshot(snap["seq"], size)
        if self.window.behind and not self.window.paused and not self.window.too_far_behind:
            await self._pump()

    # -- channel-layer messages (from backends and services) ---------------------------

    async def output_frame(self, event: dict) -> None:
        hop_trace.mark("web.output_frame")
        seq, data = event["seq"], event["data"]
        if self.window.saw_live(seq, len(data)):
            await self._send_output(seq, data)
            hop_trace.mark("web.output_sent")
        elif seq > self.window.sent + 1 and not self.window.paused:
            await self._pump()  # a gap: the channel layer dropped frames (it does, over capacity)

    async def command_event(self, event: dict) -> None:
        await self._send_command(event["command"])

    async def _send_command(self, command: dict) -> None:
        cid = str(command.get("id"))
        if cid in self._final_sent:
            return  # its end went out already (from the reply list): nothing after it is news
        if command.get("status") in Command.FINAL:
            self._final_sent[cid] = None
            if len(self._final_sent) > FINAL_KEEP:
                self._final_sent.popitem(last=False)
        output = command.get("output") or ""
        if len(output) > COMMAND_OUTPUT_MAX:
            # The output went out as output frames already; the whole of it is one GET away.
            command = {**command, "output": output[:COMMAND_OUTPUT_MAX], "output_cut": True}
        frame = {"type": "command", "command": command}
        ref = self.refs.get(cid)
        if ref is not None:
            frame["ref"] = ref
            if command.get("status") in Command.FINAL:
                self.refs.pop(cid, None)
        await self.send_json(frame)

    async def session_status(self, event: dict) -> None:
        # Placement may have changed (migration): input and resize go to where the session is now.
        try:
            self.session = await sync_to_async(selectors.session_get_for_user)(self.user, self.session_id)
        except Http404:
            pass
        await self.send_json({"type": "status", "status": event["status"], "reason": event.get("reason", "")})
