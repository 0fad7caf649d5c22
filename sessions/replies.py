"""Talking to a backend worker: a Celery task out (and a Redis list back for a reply),
or, for the hot calls, a message on the backend's inbox (workers/inbox.py).

Celery's result backend would do for replies, but a list per call, whose push wakes the
caller through the process's one reply subscriber (sessions/waits.py), needs no polling
and holds no Redis connection while it waits.
"""

from __future__ import annotations

import json
import uuid

from django.conf import settings

from vterm_project.celery import app as celery_app
from workers.routing import backend_queue

from .redis_state import REPLY_TTL, async_client, backend_inbox_key, reply_key, sync_client
from .waits import reply_push, reply_wait

# Positional arguments that carry users' secrets, by task: a session's environment (tokens,
# passwords). Celery shows a task's arguments in Flower and in the worker's log from the message's
# ``argsrepr``; these are shown there with their values masked (the task itself gets them whole).
SECRET_ARGS = {"workers.tasks.session_start": (3,)}  # (session_id, epoch, cwd, env, cols, rows)
MASK = "***"


def args_shown(task: str, args: list) -> list:
    """``args`` as Flower and the logs may show them: SECRET_ARGS dicts keep their names, not values."""
    secret = SECRET_ARGS.get(task, ())
    return [{k: MASK for k in a} if i in secret and isinstance(a, dict) else a for i, a in enumerate(args)]


def send_to_backend(queue: str, task: str, *args, **kwargs) -> None:
    shown = {"argsrepr": repr(args_shown(task, list(args)))} if task in SECRET_ARGS else {}
    celery_app.send_task(task, args=list(args), kwargs=kwargs, queue=queue, **shown)


def push_to_backend(backend_id: str, op: str, **fields) -> None:
    """Put one hot call on the backend's inbox (workers/inbox.py), or, with VTERM_HOT_CALLS=celery,
    send it as a task on the backend's queue; either way the same handler carries it out, in order."""
    msg = {"op": op, **fields}
    if settings.VTERM["HOT_CALLS"] == "celery":
        send_to_backend(backend_queue(backend_id), "workers.tasks.inbox_message", msg)
    else:
        sync_client().rpush(backend_inbox_key(backend_id), json.dumps(msg))


def inbox_push(backend_id: str, op: str, **fields) -> tuple[str, str] | None:
    """The (list, message) that puts one hot call on the backend's inbox, for a caller that pushes it
    itself (in a script of its own); None with VTERM_HOT_CALLS=celery: then ``push_to_backend``."""
    if settings.VTERM["HOT_CALLS"] == "celery":
        return None
    return backend_inbox_key(backend_id), json.dumps({"op": op, **fields})


async def ask_backend(backend_id: str, op: str, *, timeout: float, **fields) -> dict | None:
    """A hot call that is answered (a screen): on the backend's inbox, served in its session's turn,
    not behind the backend's Celery work (session starts, reconciles); its reply, or None after
    ``timeout``."""
    token = uuid.uuid4().hex
    msg = {"op": op, "reply_to": token, **fields}
    if settings.VTERM["HOT_CALLS"] == "celery":
        send_to_backend(backend_queue(backend_id), "workers.tasks.inbox_message", msg)
    else:
        await async_client().rpush(backend_inbox_key(backend_id), json.dumps(msg))
    got = await reply_wait(reply_key(token), timeout)
    return json.loads(got) if got else None


async def call_backend(queue: str, task: str, *args, timeout: float, **kwargs) -> dict | None:
    """Run ``task`` on the backend behind ``queue``; its reply, or None after ``timeout``."""
    token = uuid.uuid4().hex
    send_to_backend(queue, task, *args, reply_to=token, **kwargs)
    got = await reply_wait(reply_key(token), timeout)
    return json.loads(got) if got else None


def post_reply(token: str | None, payload: dict) -> None:
    if not token:
        return
    pipe = sync_client().pipeline()
    reply_push(pipe, reply_key(token), payload, REPLY_TTL)
    pipe.execute()
