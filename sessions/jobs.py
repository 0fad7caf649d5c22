"""Business logic of background jobs: processes a session runs beside its shell (workers/jobs.py).

The web records a job, asks the session's backend to start it (a Celery task on its queue) and
answers once it runs, with its pid. The backend appends its output to a Redis string as it comes
(the web may be on another machine) and, when it ends, stores its end and its output here. A job
ends with its session: its shell's exit, a delete, the idle TTL, or the loss of its backend
(``jobs_end_unfinished``, called wherever a session's commands are ended).
"""

from __future__ import annotations

import functools

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework.exceptions import Throttled

from workers.routing import backend_queue

from . import audit
from .api_errors import Conflict, ServiceUnavailable
from .models import Job, TerminalSession
from .ratelimit import ratelimit_check
from .redis_state import job_output_key, sync_client
from .replies import call_backend, send_to_backend

T = "workers.tasks."
OUTPUT_TTL = 3600  # seconds a job's output stays in Redis once it is stored in the database
RUNNING_TTL = 7 * 24 * 3600  # bound on the Redis copy of a job whose end is never recorded


# -- the web: start, kill, read -----------------------------------------------------------------


async def job_create(user, session_id, *, command: str, timeout: float | None = None, remote_addr: str = "",
                     via: str = "") -> Job:
    """A user starts a job in a session: admitted (the owner's command budget, the per-session cap),
    recorded and audited, then started by the session's backend; answered once it runs.
    404 for a session that is not the user's, 409 when its shell is not up, 503 when its backend
    does not answer in time (the job is then ended ``interrupted``)."""
    job = await sync_to_async(_job_record)(user, session_id, command=command, timeout=timeout,
                                           remote_addr=remote_addr, via=via)
    reply = await call_backend(backend_queue(job.backend), T + "job_start", str(job.pk),
                               timeout=settings.VTERM["RPC_TIMEOUT"])
    if reply is None:
        if await sync_to_async(_job_abandon)(job.pk, "its backend did not start it in time"):
            raise ServiceUnavailable("The session's backend did not start the job in time.")
        # Started just as the wait ran out: it runs.
    elif not reply.get("ok"):
        error = reply.get("error") or "not started"
        await sync_to_async(_job_abandon)(job.pk, error)  # unless its backend has ended it already
        raise Conflict(f"The job could not be started: {error}")
    return await Job.objects.aget(pk=job.pk)


def _job_record(user, session_id, *, command: str, timeout: float | None, remote_addr: str, via: str) -> Job:
    owner_id = _session_owner(user, session_id)
    ratelimit_check(owner_id, "command")  # jobs spend the owner's command budget
    with transaction.atomic():
        session = TerminalSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            raise Http404("No such session.")
        if session.status not in (TerminalSession.Status.ACTIVE, TerminalSession.Status.IDLE):
            raise Conflict(f"The session is {session.status}; a job starts once its shell is up.")
        if not session.backend_id:
            raise ServiceUnavailable("The session has no backend at the moment.")
        cap = settings.VTERM["MAX_JOBS_PER_SESSION"]
        running = Job.objects.filter(session=session, status=Job.Status.RUNNING).count()
        if cap > 0 and running >= cap:
            raise Throttled(wait=settings.VTERM["QUOTA_RETRY_AFTER"],
                            detail=f"The session has {running} jobs running, the most allowed ({cap}); "
                                   "wait for one to end or kill one.")
        job = Job.objects.create(session=session, command=command, timeout=timeout, backend=session.backend_id,
                                 epoch=session.epoch, cwd=session.cwd)
        TerminalSession.objects.filter(pk=session.pk).update(last_activity=timezone.now())
        detail = {"job_id": str(job.pk), **_command_detail(command), **({"via": via} if via else {})}
        audit.audit_record(user, audit.JOB_START, session.pk, remote_addr=remote_addr, detail=detail)
    return job


def _session_owner(user, session_id) -> int:
    """The session's owner (whose budget a job spends); 404 when it is not the user's (staff: anyone's)."""
    qs = TerminalSession.objects.filter(pk=session_id)
    if not user.is_staff:
        qs = qs.filter(owner=user)
    owner = qs.values_list("owner_id", flat=True).first()
    if owner is None:
        raise Http404("No such session.")
    return owner


def _command_detail(command: str) -> dict:
    detail = audit.audit_command_detail("", command)
    detail.pop("command_id")
    return detail


def _job_abandon(job_id, reason: str) -> bool:
    """The web gives up on a start: ended ``interrupted``, unless its backend started it meanwhile
    (a backend that starts it later finds it ended and ends it too)."""
    return bool(Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, started_at__isnull=True).update(
        status=Job.Status.INTERRUPTED, reason=f"not started: {reason}"[:500], ended_at=timezone.now()))


def job_kill(user, job: Job, *, remote_addr: str = "", via: str = "") -> Job:
    """End a job and its whole process tree (``killed`` once its backend has done it); 409 when it
    has ended. Spent from the owner's interrupt budget, like a Ctrl-C."""
    if job.is_final:
        raise Conflict(f"The job has already ended ({job.status}).")
    ratelimit_check(job.session.owner_id, "interrupt")
    send_to_backend(backend_queue(job.backend), T + "job_kill", str(job.pk))
    audit.audit_record(user, audit.JOB_KILL, job.session_id, remote_addr=remote_addr,
                       detail={"job_id": str(job.pk), **({"via": via} if via else {})})
    return job


def job_output_read(job: Job, offset: int) -> dict:
    """The job's output from byte ``offset`` of its UTF-8 on: ``{output, offset, next_offset, eof}``.
    ``eof``: the job has ended and there is no more. A character is never split: ``next_offset``
    stops before one that has not fully arrived."""
    final = job.is_final  # read before the output: once ended, all of it is there
    pipe = sync_client().pipeline(transaction=False)
    key = job_output_key(str(job.pk))
    pipe.strlen(key)
    pipe.exists(key)
    size, in_redis = pipe.execute()
    if in_redis:
        data = sync_client().getrange(key, offset, size - 1) if offset < size else b""
    else:
        whole = bytes(Job.objects.filter(pk=job.pk).values_list("output", flat=True).first() or b"")
        size, data = len(whole), whole[offset:]
    data = data[:_utf8_complete(data)] if not final else data
    next_offset = min(offset, size) + len(data) if offset <= size else offset
    return {"output": data.decode("utf-8", "replace"), "offset": offset, "next_offset": next_offset,
            "eof": final and next_offset >= size}


def _utf8_complete(data: bytes) -> int:
    """How much of ``data`` is whole characters (a multi-byte one may be cut at the end)."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            return len(data) if back >= need else len(data) - back
    return len(data)


@functools.cache
def _job_serializer():
    from .job_serializers import JobSerializer

    return JobSerializer()


def job_json(job: Job) -> dict:
    return _job_serializer().to_representation(job)


# -- the backend: what a job's start and end write --------------------------------------------


def job_start_context(job_id: str) -> dict | None:
    """What the backend needs to start a job the web recorded: None when it is not to be started
    (ended meanwhile, or started already). ``env``: the session's environment as last known, for
    when its shell is busy and cannot be asked."""
    job = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, started_at__isnull=True).select_related("session").first()
    if job is None:
        return None
    s = job.session
    return {"session": str(s.pk), "command": job.command, "timeout": job.timeout, "epoch": job.epoch,
            "env": s.live_env if s.live_env is not None else s.env}


def job_started(*, job_id: str, pid: int | None, cwd: str) -> bool:
    """The backend runs it: False when the web gave up meanwhile (the backend then ends it)."""
    return bool(Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, started_at__isnull=True).update(
        pid=pid, cwd=cwd, started_at=timezone.now()))


def job_output_append(job_id: str, text: str) -> None:
    """More output of a running job (its backend caps it at VTERM_OUTPUT_LIMIT)."""
    pipe = sync_client().pipeline(transaction=False)
    key = job_output_key(job_id)
    pipe.append(key, text.encode("utf-8"))
    pipe.expire(key, RUNNING_TTL)
    pipe.execute()


def job_ended(*, job_id: str, status: str, exit_code: int | None, reason: str, ended_at, truncated: bool) -> bool:
    """Store a job's end and its output. The first end stands (e.g. interrupted when its session
    moved): a later one only adds the output, if that was not stored yet. True when this end stood."""
    output = _output_take(job_id)
    stood = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
        status=status, exit_code=exit_code, reason=reason[:500], ended_at=ended_at, output=output,
        output_truncated=truncated)
    if not stood:
        Job.objects.filter(pk=job_id, output=b"").update(output=output, output_truncated=truncated)
    return bool(stood)


def _output_take(job_id: str) -> bytes:
    """The output kept in Redis, which then lapses after OUTPUT_TTL (readers then take the database's)."""
    pipe = sync_client().pipeline(transaction=False)
    key = job_output_key(job_id)
    pipe.get(key)
    pipe.expire(key, OUTPUT_TTL)
    return pipe.execute()[0] or b""


def jobs_end_unfinished(session_id, reason: str) -> int:
    """The session ended or left its backend: its running jobs end ``interrupted`` with ``reason``,
    with what they printed so far. The number ended."""
    return _jobs_interrupt(Q(session_id=session_id), reason)


def jobs_end_on_backend(backend_id: str, reason: str) -> int:
    """A backend worker (re)started: the jobs it ran before are gone (their processes ended with it)."""
    return _jobs_interrupt(Q(backend=backend_id), reason)


def _jobs_interrupt(where: Q, reason: str) -> int:
    ended = 0
    for job_id in list(Job.objects.filter(where, status=Job.Status.RUNNING).values_list("pk", flat=True)):
        try:
            output = _output_take(str(job_id))
        except RedisError:  # Redis down: the end is recorded all the same
            output = b""
        ended += Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
            status=Job.Status.INTERRUPTED, reason=reason[:500], ended_at=timezone.now(), output=output)
    return ended
