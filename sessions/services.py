"""Business logic: what happens to sessions, commands and backends.

Views, consumers, admin actions and Celery tasks call these; they hold no logic of
their own. Functions that wait on a backend are async (the web tier must not hold a
thread while a shell works); the database steps they take are plain sync helpers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.http import Http404
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.status import HTTP_201_CREATED

from vterm_project import hop_trace
from workers.jobs import session_end_reason
from workers.routing import backend_queue

from . import audit, metrics, webhooks
from .api_errors import Conflict, ServiceUnavailable
from .broadcast import session_broadcast, viewers_key
from .circuit import breaker_record_failure, breaker_record_success
from .idempotency import (
    IdempotencyClaim,
    idempotency_claim,
    idempotency_failed,
    idempotency_fingerprint,
    idempotency_made,
    idempotency_release,
    idempotency_replay,
)
from .jobs import jobs_end_unfinished
from .models import Backend, Command, SessionEvent, TerminalSession
from .pool import backend_pick_least_loaded
from .ratelimit import (
    command_admit,
    pending_wait_release,
    pending_wait_release_sync,
    ratelimit_check,
    ratelimit_check_input,
    ratelimit_check_input_async,
    session_quota_check,
)
from .redis_state import (
    REPLY_TTL,
    async_client,
    command_done_key,
    heartbeat_key,
    output_stream_key,
    sync_client,
)
from .replies import ask_backend, call_backend, inbox_push, push_to_backend, send_to_backend
from .sandbox import sandbox_spec, session_limits_resolve, shell_account_get
from .serializers import command_json
from .sql_rows import row_insert, sql_names
from .sqlite_writer import writer_turn
from .waits import reply_push, reply_wait

log = logging.getLogger(__name__)

T = "workers.tasks."
ACTIVITY_RESOLUTION = timedelta(seconds=10)  # last_activity is kept to within this


# -- backends -------------------------------------------------------------------------


def backend_register(*, backend_id: str, hostname: str, capacity: int, sandbox: str = "") -> Backend:
    now = timezone.now()
    backend, _ = Backend.objects.update_or_create(
        id=backend_id,
        defaults={"hostname": hostname, "queue": backend_queue(backend_id), "capacity": capacity,
                  "status": Backend.Status.HEALTHY, "started_at": now, "last_heartbeat": now,
                  "sandbox": sandbox},
    )
    backend_heartbeat(backend_id=backend_id)
    backend_heartbeat_redis(backend_id=backend_id)
    return backend


def backend_heartbeat(*, backend_id: str) -> str | None:
    """Say the backend is alive, in the database: death is judged from it, so a Redis outage does not
    kill backends. Returns its status (``dead`` tells a late backend to reconcile)."""
    Backend.objects.filter(pk=backend_id).update(last_heartbeat=timezone.now())
    return Backend.objects.filter(pk=backend_id).values_list("status", flat=True).first()


def backend_heartbeat_redis(*, backend_id: str) -> None:
    """The heartbeat's copy in Redis, a key that lapses after the TTL (the web's quick look)."""
    ttl = settings.VTERM["HEARTBEAT_TTL"]
    sync_client().set(heartbeat_key(backend_id), timezone.now().isoformat(), ex=max(1, int(ttl)))


# -- sessions -------------------------------------------------------------------------


def session_set_status(session: TerminalSession, status: str, reason: str = "") -> None:
    fields = {"status": status, "status_reason": reason[:500]}
    if status in (TerminalSession.Status.TERMINATED, TerminalSession.Status.LOST):
        fields["terminated_at"] = timezone.now()
    TerminalSession.objects.filter(pk=session.pk).update(**fields)
    for k, v in fields.items():
        setattr(session, k, v)
    SessionEvent.objects.create(session=session, status=status, reason=reason[:500],
                                backend=session.backend_id or "")
    session_broadcast(session.pk, {"type": "session.status", "status": status, "reason": reason})
    if status == TerminalSession.Status.LOST:
        metrics.record_session_drop(session.backend_id)
    if status in (TerminalSession.Status.TERMINATED, TerminalSession.Status.LOST):
        _output_expire(session.pk)


def _output_expire(session_id) -> None:
    """An ended session's output stream (and so its recording) goes after VTERM_STREAM_RETENTION,
    so that Redis does not grow with every session ever made."""
    retention = settings.VTERM["STREAM_RETENTION"]
    if retention > 0:
        sync_client().expire(output_stream_key(str(session_id)), retention)


def _session_place(*, owner, name: str, cwd: str, env: dict, cols: int, rows: int,
                   limits: dict | None = None, session_id=None) -> tuple[TerminalSession, dict]:
    """The new session's row (with ``session_id`` when given), and what its backend needs to build
    its sandbox."""
    account = shell_account_get(owner)
    limits = session_limits_resolve(account, limits)
    backend = backend_pick_least_loaded()
    if backend is None:
        raise ServiceUnavailable("No healthy backend has room for a new session.")
    with transaction.atomic():
        # Lock the owner's row, so that two web nodes cannot both take the last allowed session.
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        session_quota_check(owner)
        session = TerminalSession.objects.create(owner=owner, name=name, backend=backend, epoch=1,
                                                 cwd=cwd, env=env, cols=cols, rows=rows, limits=limits,
                                                 **({"id": session_id} if session_id else {}))
        SessionEvent.objects.create(session=session, status=session.status, reason="created",
                                    backend=backend.id)
    return session, sandbox_spec(session, account)


def _session_start_failed(session: TerminalSession) -> None:
    """The client gets an error for it, so the session must not appear later."""
    session.delete()


async def session_create(*, owner, name: str = "", cwd: str = "", env: dict | None = None,
                         cols: int = 120, rows: int = 40, limits: dict | None = None, remote_addr: str = "",
                         via: str = "", session_id=None) -> TerminalSession:
    """Place a session on the least-loaded backend and wait (bounded) for its shell; audited as the
    owner's (``via``: the entry point, when not the REST API; ``remote_addr``: the client's address).
    ``limits``: sandbox limits lowered for this session (sessions/sandbox.py). ``session_id``: its
    id, when the caller chose it (an Idempotency-Key's planned id)."""
    began = time.monotonic()
    hop_trace.mark("web.create")
    session, sandbox = await sync_to_async(_session_place)(owner=owner, name=name, cwd=cwd, env=env or {},
                                                           cols=cols, rows=rows, limits=limits,
                                                           session_id=session_id)
    hop_trace.mark("web.placed")
    try:
        reply = await call_backend(
            session.backend.queue, T + "session_start", str(session.pk), session.epoch, cwd, env or {}, cols, rows,
            timeout=settings.VTERM["SESSION_START_TIMEOUT"], sandbox=sandbox,
        )
        hop_trace.mark("web.start_reply")
    except Exception:
        # Broker or Redis down: the client gets a 503, so no session must appear later.
        await sync_to_async(_session_start_failed)(session)
        raise
    # The breaker counts the backend's own failures only: one with a "field" was the request's
    # (workers/start_failure.py), and says nothing either way about the backend.
    if reply is None or (not reply.get("ok") and not reply.get("field")):
        await sync_to_async(breaker_record_failure)(session.backend_id)
    elif reply.get("ok"):
        await sync_to_async(breaker_record_success)(session.backend_id)
    if reply is not None and not reply.get("ok"):
        await sync_to_async(_session_start_failed)(session)
        if reply.get("field"):
            raise ValidationError({reply["field"]: [reply["error"]]})
        raise ServiceUnavailable(f"The backend could not start the shell: {reply.get('error')}")
    # No reply in time: the session stays "initializing" and the backend finishes it later.
    if reply is not None:
        metrics.record_session_created(time.monotonic() - began)
    created = await sync_to_async(_session_created)(session.pk, owner, env or {}, remote_addr, via)
    hop_trace.mark("web.created")
    return created


async def session_submit(*, owner, idempotency_key: str | None = None, remote_addr: str = "",
                         **fields) -> tuple[TerminalSession, int]:
    """``POST /api/v1/sessions/``: session_create, with the request's Idempotency-Key, if any
    (sessions/idempotency.py). The session and the status to answer: a repeat gets the session the
    first request made, as it is now, and makes none."""
    if idempotency_key is None:
        return await session_create(owner=owner, remote_addr=remote_addr, **fields), HTTP_201_CREATED
    claim = await sync_to_async(idempotency_claim)(owner.pk, idempotency_key, idempotency_fingerprint("session", fields),
                                                   seconds=settings.VTERM["SESSION_START_TIMEOUT"])
    try:
        made = await sync_to_async(idempotency_replay)(claim, TerminalSession.objects.select_related("owner", "backend"))
        if made is not None:
            return made, claim.status
        session = await session_create(owner=owner, remote_addr=remote_addr, session_id=claim.id, **fields)
        await sync_to_async(idempotency_made)(claim, HTTP_201_CREATED)
        return session, HTTP_201_CREATED
    except BaseException:
        await sync_to_async(idempotency_failed)(claim, TerminalSession.objects.all())
        raise
    finally:
        await idempotency_release(claim)


def _session_created(session_id, owner, env: dict, remote_addr: str, via: str) -> TerminalSession:
    session = TerminalSession.objects.select_related("owner", "backend").get(pk=session_id)
    detail = {"name": session.name, "cwd": session.cwd, "backend": session.backend_id, "env_names": sorted(env),
              **({"via": via} if via else {})}
    audit.audit_record(owner, audit.SESSION_CREATE, session.pk, remote_addr=remote_addr, detail=detail)
    return session


def session_started(*, session_id: str, epoch: int, cwd: str, initializing_only: bool = False) -> list[dict] | None:
    """The backend's shell is up. Returns the commands queued meanwhile, oldest first, for it to
    run; None when the placement moved on meanwhile (fencing) or, with ``initializing_only``,
    when the session is no longer initializing (its start was marked done already)."""
    only = {"status": TerminalSession.Status.INITIALIZING} if initializing_only else {}
    with transaction.atomic():
        # Locks the row first: command_create either queued its command before (it is in the
        # list: it is not sent while the session is initializing) or sees it active after.
        updated = TerminalSession.objects.filter(pk=session_id, epoch=epoch, **only).update(cwd=cwd)
        if not updated:
            return None
        session = TerminalSession.objects.get(pk=session_id)
        if session.status in (TerminalSession.Status.INITIALIZING, TerminalSession.Status.MIGRATING):
            session_set_status(session, TerminalSession.Status.ACTIVE, "shell started")
        return commands_queued(session_id)


# What a backend is given to run a command (the inbox message carries the same keys).
COMMAND_RUN_FIELDS = ("id", "command", "timeout", "idle_timeout")


def command_run_spec(row: dict) -> dict:
    """A stored command as a backend takes it: COMMAND_RUN_FIELDS of ``row`` (a .values() row or a
    Command's vars), the id as a string."""
    return {**{f: row[f] for f in COMMAND_RUN_FIELDS}, "id": str(row["id"])}


def commands_queued(session_id) -> list[dict]:
    """A session's queued commands, oldest first, as a backend takes them (command_run_spec)."""
    rows = (Command.objects.filter(session_id=session_id, status=Command.Status.QUEUED)
            .order_by("seq").values(*COMMAND_RUN_FIELDS))
    return [command_run_spec(c) for c in rows]


def session_terminate(session: TerminalSession, reason: str = "ended by its owner", *, by=None,
                      remote_addr: str = "", via: str = "") -> None:
    """End a session (an ended one stays as it is). ``by``: the user who asked, audited as theirs
    with ``remote_addr`` and ``via`` (the entry point, when not the REST API); None when the
    service ends it itself (the idle TTL)."""
    _session_end(session, reason)
    if by is not None:
        detail = {"owner": session.owner.username, **({"via": via} if via else {})}
        audit.audit_record(by, audit.SESSION_TERMINATE, session.pk, remote_addr=remote_addr, detail=detail)


def _session_end(session: TerminalSession, reason: str) -> None:
    if not session.is_live:
        return
    backend = session.backend
    alive = backend is not None and sync_client().exists(heartbeat_key(backend.id))
    if alive:
        session_set_status(session, TerminalSession.Status.TERMINATING, reason)
        send_to_backend(backend.queue, T + "session_stop", str(session.pk), reason)
    else:
        session_set_status(session, TerminalSession.Status.TERMINATED, reason)
        _commands_interrupt_unfinished(session, "the session ended")


def session_shell_exited(*, session_id: str, reason: str, backend_id: str | None = None,
                         epoch: int | None = None) -> None:
    session = TerminalSession.objects.filter(pk=session_id).first()
    if session is None or session.status in (TerminalSession.Status.TERMINATED, TerminalSession.Status.LOST):
        return
    if (backend_id is not None and session.backend_id != backend_id) or (epoch is not None and session.epoch != epoch):
        return  # a stale copy: the session lives elsewhere now (fencing, DESIGN.md §7)
    if session.status == TerminalSession.Status.TERMINATING:
        reason = session.status_reason or reason
    session_set_status(session, TerminalSession.Status.TERMINATED, reason)
    _commands_interrupt_unfinished(session, reason)


def _commands_interrupt_unfinished(session: TerminalSession, reason: str) -> None:
    now = timezone.now()
    if Command.objects.filter(session=session).exclude(status__in=Command.FINAL).update(
            status=Command.Status.INTERRUPTED, reason=reason[:500], finished_at=now):
        webhooks.deliveries_begin(Command.objects.filter(session=session, finished_at=now))
    jobs_end_unfinished(session.pk, session_end_reason(reason))  # its background jobs end with it


def _session_require_live(session: TerminalSession) -> None:
    if not session.is_live:
        raise Conflict(f"The session is {session.status}.")
    if session.backend is None:
        raise ServiceUnavailable("The session has no backend at the moment.")


def session_resize(session: TerminalSession, *, cols: int, rows: int) -> TerminalSession:
    """REST and WebSocket `resize`: spent from the owner's resize budget (each one is a database
    write and an audit row)."""
    _session_require_live(session)
    ratelimit_check(session.owner_id, "resize")
    TerminalSession.objects.filter(pk=session.pk).update(cols=cols, rows=rows)
    session.cols, session.rows = cols, rows
    push_to_backend(session.backend_id, "resize", session=str(session.pk), cols=cols, rows=rows)
    return session


def session_input(session: TerminalSession, *, data: str | None = None, keys: list[str] | None = None,
                  touch: bool = True) -> None:
    """Keystrokes (REST `input`, WebSocket `input` frames): spent from the owner's input budget,
    then straight to the backend. ``touch=False`` leaves out the database write that marks
    activity; a terminal, which sends a frame per key, marks it now and then (``session_touch``)."""
    _session_require_live(session)
    ratelimit_check_input(session.owner_id, len(data.encode("utf-8", "surrogatepass")) if data else 0)
    if touch:
        session_touch(session)
    push_to_backend(session.backend_id, "input", session=str(session.pk), data=data, keys=keys)


async def session_input_ws(session: TerminalSession, *, data: str | None = None,
                           keys: list[str] | None = None) -> None:
    """A WebSocket's keystrokes: ``session_input`` (touch=False) on the event loop itself, the rate
    limit and the push to the backend's inbox in one Redis script. A thread hop each way and two
    blocking Redis calls in it were half of what the web added to an echo. ``session`` comes with
    its backend (selectors.session_get_for_user): the check reads no row."""
    _session_require_live(session)
    nbytes = len(data.encode("utf-8", "surrogatepass")) if data else 0
    fields = {"session": str(session.pk), "data": data, "keys": keys}
    push = inbox_push(session.backend_id, "input", **fields)
    await ratelimit_check_input_async(session.owner_id, nbytes, push=push)
    if push is None:  # VTERM_HOT_CALLS=celery
        await sync_to_async(push_to_backend)(session.backend_id, "input", **fields)


async def session_screen(session: TerminalSession, *, escapes: bool = False) -> dict:
    await sync_to_async(_session_require_live)(session)
    reply = await ask_backend(session.backend_id, "screen", session=str(session.pk), escapes=escapes,
                              timeout=settings.VTERM["RPC_TIMEOUT"])
    if reply is None:
        raise ServiceUnavailable("The session's backend did not answer in time.")
    if not reply.get("ok"):
        raise Conflict(reply.get("error", "The screen could not be read."))
    return reply["screen"]


async def session_screen_read(session: TerminalSession) -> dict:
    """`GET …/screen/`: the screen, spent from the owner's screen budget (each read is a call to
    the session's backend). A WebSocket's own snapshots are not charged."""
    await sync_to_async(ratelimit_check)(session.owner_id, "screen")
    return await session_screen(session)


def session_recording_open(session: TerminalSession) -> None:
    """A download of the session's recording (it reads the whole output stream): spent from the
    owner's recording budget."""
    ratelimit_check(session.owner_id, "recording")


# -- commands -------------------------------------------------------------------------


def command_create(user, session_id, *, command: str, timeout: float | None = None,
                   idle_timeout: float | None = None, notify_url: str | None = None, wait: float = 0,
                   remote_addr: str = "", via: str = "", command_id=None) -> tuple[Command, str | None]:
    """A user runs a command (REST or WebSocket): admitted, recorded, queued and audited in one transaction.

    Admitted: it spends the owner's command budget and, with ``wait`` (seconds the caller will
    await its result), takes one of the user's pending waits (429 beyond either), in one Redis
    call. Returns the command and the wait's id, for ``command_wait_end`` once the wait is over.
    404 when the session is not the user's (staff: not anyone's), 409 when it has ended.
    The session's row is read once, inside the transaction, where its placement is current.
    ``command_id``: the command's id, when the caller chose it (an Idempotency-Key's planned id).
    ``notify_url``: POSTed the command once it has ended (sessions/webhooks.py); 400 if it may not be.
    """
    webhooks.notify_url_check(notify_url)  # a DNS lookup: before the transaction, and before any spend
    wait_id = command_admit(_command_budget_owner(user, session_id), user.pk, wait)  # the owner's budget
    hop_trace.mark("web.admitted")
    try:
        with writer_turn(), transaction.atomic():
            cmd = _command_record(session_id, command=command, timeout=timeout, idle_timeout=idle_timeout,
                                  notify_url=notify_url or "", owner_id=None if user.is_staff else user.pk,
                                  command_id=command_id)
            detail = {**({"via": via} if via else {}), **audit.audit_command_detail(cmd.pk, cmd.command)}
            audit.audit_record(user, audit.COMMAND_RUN, session_id, remote_addr=remote_addr, detail=detail)
    except BaseException:
        pending_wait_release_sync(user.pk, wait_id)
        raise
    return cmd, wait_id


async def command_wait_end(user_id, wait_id: str | None) -> None:
    await pending_wait_release(user_id, wait_id)


@dataclass
class CommandSubmitted:
    """A command submitted through the REST API, for its answer and then ``command_submit_end``."""

    cmd: Command
    status: int  # to answer
    user_id: int
    wait_id: str | None
    claim: IdempotencyClaim | None


def command_submit(user, session_id, *, command: str, wait: float = 0, remote_addr: str = "",
                   idempotency_key: str | None = None, **options) -> CommandSubmitted:
    """``POST …/commands/`` (both roads: sessions/api.py, sessions/command_route.py): command_create,
    with the request's Idempotency-Key, if any (sessions/idempotency.py). A repeat gets the command
    the first request made, as it is now (and waits for it as that one would), and runs nothing.
    ``options``: the command's own (``timeout``, ``idle_timeout``, ``notify_url``), as command_create takes them."""
    if idempotency_key is None:
        cmd, wait_id = command_create(user, session_id, command=command, wait=wait, remote_addr=remote_addr, **options)
        return CommandSubmitted(cmd, HTTP_201_CREATED, user.pk, wait_id, None)
    fingerprint = command_fingerprint(session_id, command=command, wait=wait, **options)
    claim = idempotency_claim(user.pk, idempotency_key, fingerprint, seconds=wait)
    try:
        made = idempotency_replay(claim, Command.objects.filter(session_id=session_id))
        if made is not None:
            return CommandSubmitted(made, claim.status, user.pk, None, claim)
        cmd, wait_id = command_create(user, session_id, command=command, wait=wait, remote_addr=remote_addr,
                                      command_id=claim.id, **options)
    except BaseException:
        idempotency_failed(claim, Command.objects.all())
        raise
    idempotency_made(claim, HTTP_201_CREATED)
    return CommandSubmitted(cmd, HTTP_201_CREATED, user.pk, wait_id, claim)


def command_fingerprint(session_id, *, command: str, wait: float = 0, **options) -> str:
    """What makes two submissions of a command the same request (its Idempotency-Key's fingerprint):
    the session, the command, ``wait`` and the command's options given (none given = all null)."""
    fields = {"timeout": None, "idle_timeout": None, "notify_url": None, **options}
    return idempotency_fingerprint("command", {"session": str(session_id), "command": command, "wait": wait,
                                               **fields})


async def command_submit_answered(submitted: CommandSubmitted) -> None:
    """The answer is ready: a repeat of the request may have its key from now on. Before the answer
    leaves, so that a client that repeats it the moment it has the answer never finds the key held
    (docs/api.md: 409 only while the first is being answered)."""
    claim, submitted.claim = submitted.claim, None
    await idempotency_release(claim)


async def command_submit_end(submitted: CommandSubmitted) -> None:
    """After the answer (or in its place): the wait is over, and the key is free if it was not yet."""
    await pending_wait_release(submitted.user_id, submitted.wait_id)
    await command_submit_answered(submitted)


_session_owners: dict[str, int] = {}  # a session's owner never changes


def _command_budget_owner(user, session_id) -> int:
    """Whose rate budget a command spends: the session owner's, whoever (staff) submits."""
    if not user.is_staff:
        return user.pk  # someone else's session is a 404 below, after the same spend
    key = str(session_id)
    if key not in _session_owners:
        owner = TerminalSession.objects.filter(pk=session_id).values_list("owner_id", flat=True).first()
        if owner is None:
            raise Http404("No such session.")
        if len(_session_owners) > 100_000:
            _session_owners.clear()
        _session_owners[key] = owner
    return _session_owners[key]


def _command_record(session_id, *, command: str, timeout: float | None, idle_timeout: float | None = None,
                    notify_url: str = "", owner_id: int | None = None, command_id=None) -> Command:
    """Inside a transaction: the row, and its sending to the backend once that commits (on SQLite
    still inside the writer's turn: the session's commands reach its backend in seq order)."""
    # The update locks the session's row first, so placement read after it is current:
    # a migration either sees this command queued or happens before it (sessions/failover.py).
    taken = _session_next_seq(session_id, owner_id)
    if taken is None:
        raise Http404("No such session.")
    seq, status, backend_id, epoch = taken
    if status not in TerminalSession.LIVE:
        raise Conflict(f"The session is {status}.")
    if not backend_id:
        raise ServiceUnavailable("The session has no backend at the moment.")
    cmd = row_insert(Command, session_id=session_id, seq=seq, command=command, timeout=timeout,
                     idle_timeout=idle_timeout, notify_url=notify_url, **({"id": command_id} if command_id else {}))
    if status in (TerminalSession.Status.ACTIVE, TerminalSession.Status.IDLE):
        # While the shell starts or moves, its backend takes the queued commands from the
        # database once it is up (session_started, failover.session_resumed).
        transaction.on_commit(lambda: _command_send(cmd, backend_id, epoch))
    return cmd


def _session_next_seq(session_id, owner_id: int | None) -> tuple[int, str, str | None, int] | None:
    """Count a command in the session's row, locking it: (seq, status, backend_id, epoch), or None
    when there is no such session (of ``owner_id``). One statement (UPDATE ... RETURNING, which
    SQLite and PostgreSQL both have), where the ORM would need an UPDATE and then a SELECT."""
    meta, q = TerminalSession._meta, sql_names(TerminalSession, connection.vendor)
    count = q["command_count"]
    pk = meta.pk.get_db_prep_value(session_id, connection)
    sql = f"UPDATE {q['table']} SET {count} = {count} + 1, {q['last_activity']} = %s WHERE {q['pk']} = %s"
    params = [meta.get_field("last_activity").get_db_prep_value(timezone.now(), connection), pk]
    if owner_id is not None:
        sql += f" AND {q['owner']} = %s"
        params.append(owner_id)
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {count}, {q['status']}, {q['backend']}, {q['epoch']}", params)
        return cursor.fetchone()


def _command_send(cmd: Command, backend_id: str, epoch: int) -> None:
    """Queue a recorded command on its backend; if Redis is down it ends, not lingers."""
    hop_trace.mark("web.committed")
    try:
        push_to_backend(backend_id, "run", id=str(cmd.pk), session=str(cmd.session_id), epoch=epoch,
                        command=cmd.command, timeout=cmd.timeout, idle_timeout=cmd.idle_timeout, seq=cmd.seq,
                        submitted_at=cmd.submitted_at.isoformat(),
                        **({"notify_url": cmd.notify_url} if cmd.notify_url else {}))  # back in its end's `known`
        hop_trace.mark("web.pushed")
    except Exception as exc:
        Command.objects.filter(pk=cmd.pk, status=Command.Status.QUEUED).update(
            status=Command.Status.INTERRUPTED, finished_at=timezone.now(),
            reason=f"could not be queued: Redis is unavailable ({exc.__class__.__name__})")
        webhooks.deliveries_begin(Command.objects.filter(pk=cmd.pk))
        raise ServiceUnavailable("The message broker (Redis) is unavailable; try again shortly.") from exc


async def command_wait(cmd: Command, wait: float) -> dict:
    """The command as JSON once it has finished, or as it stands after ``wait`` seconds."""
    if wait > 0 and not cmd.is_final:  # final already: a repeated request's command
        got = await reply_wait(command_done_key(str(cmd.pk)), wait)
        if got:
            return json.loads(got)
    fresh = await Command.objects.aget(pk=cmd.pk)
    return command_json(fresh)


def command_interrupt(cmd: Command) -> None:
    if cmd.is_final:
        raise Conflict(f"The command has already ended ({cmd.status}).")
    session = cmd.session
    _session_require_live(session)
    ratelimit_check(session.owner_id, "interrupt")
    push_to_backend(session.backend_id, "interrupt", session=str(session.pk), command=str(cmd.pk))


def _command_overhead(cmd: Command) -> float | None:
    """What vterm added to a command: submission to result, less its run time in the shell."""
    if cmd.finished_at is None or cmd.submitted_at is None or cmd.duration_ms is None:
        return None
    return (cmd.finished_at - cmd.submitted_at).total_seconds() - cmd.duration_ms / 1000.0


def command_started(*, command_id: str, started_at) -> dict | None:
    updated = Command.objects.filter(pk=command_id, status=Command.Status.QUEUED).update(
        status=Command.Status.RUNNING, started_at=started_at)
    if not updated:
        return None
    return command_json(Command.objects.get(pk=command_id))


def commands_finished(ends: list[dict]) -> list[dict | None]:
    """Store the ends of commands, then tell their waiters and their viewers, if any.

    Several at once when a backend's writer is behind: one commit for all of them (one WAL
    flush; on SQLite one turn of the write lock), then one Redis pipeline for their replies.
    Each end is _command_ended's arguments; ``known`` in it is what the backend was told of the
    command when it was sent (session, seq, command, timeouts, submitted_at), which spares
    reading the row back. Returns each one's JSON, or None for an end that came after another
    (the first end stands)."""
    cmds = [_command_ended(**end) for end in ends]
    # A short, known command's end is one statement, which needs no transaction of its own
    # (BEGIN and COMMIT would cost a database round trip each).
    alone = len(ends) == 1 and cmds[0][0] is not None and not cmds[0][2]
    with contextlib.nullcontext() if alone else transaction.atomic():
        stored = [_command_end_store(end["command_id"], *cmd) for end, cmd in zip(ends, cmds)]
        webhooks.commands_ended(stored)
    hop_trace.mark("worker.stored")
    pipe = sync_client().pipeline(transaction=False)
    replies = []
    for end, cmd in zip(ends, stored):
        if cmd is None:
            replies.append(None)
            continue
        data = command_json(cmd)
        reply_push(pipe, command_done_key(end["command_id"]), data, REPLY_TTL)
        metrics.record_command_finished(status=end["status"], latency_s=_command_overhead(cmd), pipe=pipe)
        replies.append(data)
    done = [(cmd.session_id, data) for cmd, data in zip(stored, replies) if data is not None]
    for session_id, _ in done:
        pipe.exists(viewers_key(session_id))  # after the replies: see sessions/broadcast.py
    answers = pipe.execute()
    hop_trace.mark("worker.replied")
    for (session_id, data), watched in zip(done, answers[len(answers) - len(done):]):
        if watched:
            session_broadcast(session_id, {"type": "command.event", "command": data})
    return replies


def _command_ended(*, command_id: str, status: str, exit_code, output: str, output_raw: bytes, truncated: bool,
                   cwd: str | None, started_at, finished_at, duration_ms, reason: str = "",
                   known: dict | None = None) -> tuple[Command | None, dict, bool | None]:
    """(the command as it ends, when ``known`` says enough of it; the fields its end sets;
    whether it ran long enough to move its session's last_activity, None: not known yet)."""
    ended = {"status": status, "exit_code": exit_code, "output": output, "output_raw": output_raw,
             "output_truncated": truncated, "cwd": cwd or "", "reason": reason[:500],
             "finished_at": finished_at, "duration_ms": duration_ms, "started_at": started_at}
    if known is None:
        return None, ended, None
    cmd = Command(id=command_id, session_id=known["session"], seq=known["seq"], command=known["command"],
                  timeout=known.get("timeout"), idle_timeout=known.get("idle_timeout"),
                  submitted_at=datetime.fromisoformat(known["submitted_at"]),
                  notify_url=known.get("notify_url", ""), **ended)
    return cmd, ended, _ran_long(cmd)


def _ran_long(cmd: Command) -> bool:
    """Submission set last_activity; a long command's end moves it on (the idle TTL counts from it)."""
    return cmd.finished_at is None or cmd.finished_at - cmd.submitted_at > ACTIVITY_RESOLUTION


def _command_end_store(command_id: str, cmd: Command | None, ended: dict, long_ran: bool | None) -> Command | None:
    """Write one end (in the caller's transaction, if any); None if the command had already ended."""
    if not _command_end_update(command_id, ended):
        return None
    if cmd is None:
        cmd = Command.objects.get(pk=command_id)
        long_ran = _ran_long(cmd)
    if long_ran:
        TerminalSession.objects.filter(pk=cmd.session_id).update(last_activity=ended["finished_at"])
    return cmd


def _command_end_update(command_id: str, ended: dict) -> int:
    """The end's UPDATE, 1 when it was written. The first end stands (e.g. interrupted by a migration):
    a later one changes nothing; a start time already written is kept. One statement written out once
    (_command_end_sql) with its values prepared by the fields, as the ORM would: its update()
    compiled the same statement again for every end, a third of the worker's calls per command
    (tests/bench/command_cost.py)."""
    sql, fields = _command_end_sql(connection.vendor)
    params = [f.get_db_prep_save(ended[f.name], connection) for f in fields]
    params += [Command._meta.pk.get_db_prep_value(command_id, connection), *Command.FINAL]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.cache
def _command_end_sql(vendor: str) -> tuple[str, list]:
    """(the UPDATE of a command's end, the fields whose values it takes in order, then the id and the final states)."""
    meta, q = Command._meta, sql_names(Command, vendor)
    names = ["status", "exit_code", "output", "output_raw", "output_truncated", "cwd", "reason", "finished_at",
             "duration_ms"]
    sets = [f"{q[n]} = %s" for n in names] + [f"{q['started_at']} = COALESCE({q['started_at']}, %s)"]
    final = ", ".join(["%s"] * len(Command.FINAL))
    sql = f"UPDATE {q['table']} SET {', '.join(sets)} WHERE {q['pk']} = %s AND {q['status']} NOT IN ({final})"
    return sql, [meta.get_field(n) for n in [*names, "started_at"]]


# -- terminal output (WebSocket viewers) -------------------------------------------------
# The backend numbers a session's output frames and keeps them in a bounded Redis stream
# whose entry ids are "<seq>-1" (workers/backend.py); viewers replay and mend from it.


async def output_last_seq(session_id) -> int:
    """The seq of the session's newest output frame (0: none yet)."""
    last = await async_client().xrevrange(output_stream_key(str(session_id)), count=1)
    return int(last[0][0].split(b"-")[0]) if last else 0


async def output_frames(session_id, *, after: int, upto: int, count: int) -> list[tuple[int, str]]:
    """Output frames after seq ``after`` up to ``upto``, at most ``count``, oldest first."""
    if upto <= after:
        return []
    entries = await async_client().xrange(output_stream_key(str(session_id)), min=f"{after + 1}-0",
                                          max=f"{upto}-1", count=count)
    return [(int(eid.split(b"-")[0]), fields[b"d"].decode("utf-8", "replace")) for eid, fields in entries]


async def session_snapshot(session: TerminalSession, tries: int = 3) -> dict:
    """The screen (with its escapes) and the seq of the last output frame it shows.

    Output may arrive while tmux captures; the capture is taken again until the seq is
    the same before and after, so that the frames after it neither repeat nor miss much.
    """
    for _ in range(tries):
        before = await output_last_seq(session.pk)
        screen = await session_screen(session, escapes=True)
        after = await output_last_seq(session.pk)
        if before == after:
            break
    return {**screen, "seq": after}


def session_interrupt(session: TerminalSession) -> None:
    """Ctrl-C in the session: ends its running command (as interrupted) or the foreground program.
    Spent from the owner's interrupt budget, as ``command_interrupt``."""
    _session_require_live(session)
    ratelimit_check(session.owner_id, "interrupt")
    push_to_backend(session.backend_id, "interrupt", session=str(session.pk))


def session_touch(session: TerminalSession) -> None:
    TerminalSession.objects.filter(pk=session.pk).update(last_activity=timezone.now())


USAGE_BATCH = 100  # rows per transaction: the writer lock is held a few ms at a time


def session_resource_usage_record(*, backend_id: str, usage: dict[str, dict]) -> int:
    """Store one round of a backend's samples (workers/resource_usage.py); the number stored.

    Only sessions still placed on that backend and live take them: a backend that lost a
    session to a migration does not overwrite the figures of its new home.

    One prepared UPDATE by primary key, run for every row (``executemany``), in transactions
    of USAGE_BATCH rows. The ORM's ``bulk_update`` writes a CASE with a branch per row, which
    SQLite evaluates for every row: 65-98 ms for 500 rows against 8 ms this way, with the
    database's write lock held all along. At 1000 sessions that wait was the p99 of commands
    (docs/bench.md).
    """
    meta, q = TerminalSession._meta, sql_names(TerminalSession, connection.vendor)
    field, live = meta.get_field("resource_usage"), list(TerminalSession.LIVE)
    sql = (f"UPDATE {q['table']} SET {q['resource_usage']} = %s WHERE {q['pk']} = %s AND {q['backend']} = %s"
           f" AND {q['status']} IN ({', '.join(['%s'] * len(live))})")
    rows = [(field.get_db_prep_save(figures, connection), meta.pk.get_db_prep_value(sid, connection),
             backend_id, *live) for sid, figures in usage.items()]
    stored = 0
    for i in range(0, len(rows), USAGE_BATCH):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows[i:i + USAGE_BATCH])
            stored += max(cursor.rowcount, 0)
    return stored
