"""Services for sandboxed shells: each user's OS identity and each session's limits.

A user's uid is allocated once, from VTERM_SANDBOX_UID_MIN..MAX, the first time they get a
session, and stays theirs (the unique constraint makes two users' allocations race safely).
A session's limits are the user's (staff set them in the admin; else the defaults), lowered
for that session if the client asked (docs/security.md). The backend reads both when it
builds the session's sandbox (workers/backend.py).
"""

from __future__ import annotations

import os

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from .api_errors import ServiceUnavailable
from .models import ShellAccount, TerminalSession

LIMIT_FIELDS = ("processes", "memory_mb", "cpu_weight")


def shell_account_get(user) -> ShellAccount:
    """The user's shell identity, allocated on first use."""
    try:
        return ShellAccount.objects.get(user=user)
    except ShellAccount.DoesNotExist:
        pass
    low, high = settings.VTERM["SANDBOX_UID_MIN"], settings.VTERM["SANDBOX_UID_MAX"]
    for _ in range(20):
        last = ShellAccount.objects.aggregate(m=Max("uid"))["m"]
        uid = low if last is None else last + 1
        while uid in (0, os.getuid()):
            uid += 1
        if uid > high:
            # The range is used up from the top: take the lowest free one.
            taken = set(ShellAccount.objects.values_list("uid", flat=True))
            uid = next((u for u in range(low, high + 1) if u not in taken and u not in (0, os.getuid())), None)
            if uid is None:
                raise ServiceUnavailable("No shell uid is free (VTERM_SANDBOX_UID_MIN..MAX is used up).")
        try:
            with transaction.atomic():
                return ShellAccount.objects.create(user=user, uid=uid)
        except IntegrityError:
            existing = ShellAccount.objects.filter(user=user).first()
            if existing is not None:
                return existing  # allocated meanwhile by another request
    raise ServiceUnavailable("Could not allocate a shell uid; try again.")


def user_limits(account: ShellAccount) -> dict:
    """The user's per-session limits: staff's values where set, else the defaults."""
    v = settings.VTERM
    return {
        "processes": account.max_processes or v["SANDBOX_PROCESSES"],
        "memory_mb": account.memory_mb or v["SANDBOX_MEMORY_MB"],
        "cpu_weight": account.cpu_weight or v["SANDBOX_CPU_WEIGHT"],
    }


def session_limits_resolve(account: ShellAccount, asked: dict | None) -> dict:
    """A new session's limits: the user's, each lowered where the client asked. A client cannot
    raise one: asking for more than the user has gives the user's (the session's ``limits`` in the
    answer say what holds)."""
    limits = user_limits(account)
    for key, value in (asked or {}).items():
        limits[key] = min(limits[key], value)
    return limits


def session_sandbox_spec(session_id: str) -> dict:
    """What a backend needs to build the session's sandbox (workers/sandbox SandboxSpec)."""
    session = TerminalSession.objects.select_related("owner").get(pk=session_id)
    return sandbox_spec(session, shell_account_get(session.owner))


def sandbox_spec(session: TerminalSession, account: ShellAccount) -> dict:
    """The spec of a session whose owner's account is at hand: sent with the start of a new
    session, so that the backend need not read it back from the database."""
    limits = {**user_limits(account), **(session.limits or {})}
    return {
        "uid": account.uid,
        "gid": account.uid,
        "username": session.owner.get_username(),
        "home": os.path.join(settings.VTERM["SANDBOX_HOMES"], str(account.uid)),
        "processes": int(limits["processes"]),
        "memory_bytes": int(limits["memory_mb"]) * 1024 * 1024,
        "cpu_weight": int(limits["cpu_weight"]),
    }
