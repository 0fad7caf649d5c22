"""Login attempts throttled by (username, client address) and by address alone, in Redis.

Every password login in vterm (the browser's /login/, /admin/login/, /api-auth/login/)
calls ``django.contrib.auth.authenticate``, which asks this backend: so one place holds
for all of them, on every web node. After LOGIN_MAX_FAILURES failures within LOGIN_WINDOW
seconds further attempts are refused, even with the right password, until the window
passes; an address trying many usernames is refused after ten times as many.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied

from .redis_state import sync_client


def client_addr(request) -> str:
    return (request.META.get("REMOTE_ADDR") or "") if request is not None else ""


def _keys(username: str, addr: str) -> tuple[str, str]:
    # Hashed: usernames and addresses are not kept in Redis in the clear.
    pair = hashlib.sha256(f"{username.lower()}\0{addr}".encode()).hexdigest()[:32]
    only_addr = hashlib.sha256(addr.encode()).hexdigest()[:32]
    p = settings.VTERM["REDIS_PREFIX"] + "vterm:login:"
    return p + "u:" + pair, p + "a:" + only_addr


def login_retry_after(username: str, addr: str) -> int:
    """Seconds until ``username`` may try again from ``addr``; 0 when they may now."""
    limit = settings.VTERM["LOGIN_MAX_FAILURES"]
    if limit <= 0:
        return 0
    pair, only_addr = _keys(username, addr)
    r = sync_client()
    pipe = r.pipeline()
    pipe.get(pair)
    pipe.ttl(pair)
    pipe.get(only_addr)
    pipe.ttl(only_addr)
    n_pair, ttl_pair, n_addr, ttl_addr = pipe.execute()
    wait = 0
    if n_pair is not None and int(n_pair) >= limit:
        wait = max(wait, ttl_pair, 1)
    if n_addr is not None and int(n_addr) >= limit * 10:
        wait = max(wait, ttl_addr, 1)
    return wait


def login_failed(username: str, addr: str) -> None:
    window = settings.VTERM["LOGIN_WINDOW"]
    r = sync_client()
    pipe = r.pipeline()
    for key in _keys(username, addr):
        pipe.incr(key)
        pipe.expire(key, window, nx=True)  # the window starts at the first failure
    pipe.execute()


def login_succeeded(username: str, addr: str) -> None:
    sync_client().delete(_keys(username, addr)[0])


class ThrottledModelBackend(ModelBackend):
    """Django's username/password backend, refusing while too many attempts failed."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(self._username_field(), "")
        username = str(username or "")
        addr = client_addr(request)
        wait = login_retry_after(username, addr)
        if wait:
            if request is not None:
                request.vterm_login_retry_after = wait  # a login page may say so
            from .audit import audit_record

            audit_record(None, "auth.login_throttled", remote_addr=addr,
                         detail={"username": username[:150], "retry_after": wait})
            # PermissionDenied stops authenticate() from asking any other backend.
            raise PermissionDenied(f"Too many failed logins; try again in {wait} s.")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            login_failed(username, addr)
        else:
            login_succeeded(username, addr)
        return user

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD
