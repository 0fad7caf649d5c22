"""Completion webhooks (the Standard Webhooks specification, https://www.standardwebhooks.com/).

A command submitted with a ``notify_url`` is POSTed there once it has ended, as the JSON that
``GET …/commands/{id}/`` answers, signed with its session owner's secret (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: the ``standardwebhooks`` package signs).

Who may be called: ``notify_url_check`` at submission (services.command_create), and again before
each attempt, which then connects to the very address it checked (no DNS rebinding in between).
An address that is not global unicast (loopback, private, link-local, ...) is refused unless the
URL's host is listed in VTERM_WEBHOOK_ALLOWED_HOSTS.

Deliveries: a WebhookDelivery row per command, a WebhookAttempt row per POST. The POSTs run on the
control worker (its vterm.webhooks queue, never a backend's: they wait on other people's servers).
A retry due within VTERM_WEBHOOK_COUNTDOWN_MAX (60 s) is sent to Celery with a countdown; a later one
(a countdown that long would outlive the broker's visibility timeout), and any task that was lost, is
handed out by the beat sweep ``deliveries_due``, from the database.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from standardwebhooks import Webhook

from vterm_project.celery import app as celery_app
from workers.routing import WEBHOOK_QUEUE

from .models import Command, WebhookAttempt, WebhookDelivery, WebhookSecret
from .serializers import command_json

log = logging.getLogger(__name__)

DELIVER_TASK = "workers.tasks.webhook_deliver"
SWEEP_BATCH = 500
USER_AGENT = "vterm-webhooks/1"
_renderer = JSONRenderer()


class AddressRefused(Exception):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


class Unresolvable(Exception):
    """The URL's host does not resolve (now)."""


# -- the secret ---------------------------------------------------------------------------


def _secret_new() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_get(user) -> WebhookSecret:
    """The user's signing secret, made on first use."""
    return _secret_of(user.pk)


def _secret_of(user_id) -> WebhookSecret:
    secret, _ = WebhookSecret.objects.get_or_create(user_id=user_id, defaults={"secret": _secret_new(),
                                                                            "created_at": timezone.now()})
    return secret


def secret_rotate(user) -> WebhookSecret:
    """A new secret for the user: every delivery from now on (retries too) is signed with it alone."""
    secret, _ = WebhookSecret.objects.update_or_create(user=user, defaults={"secret": _secret_new(),
                                                                            "created_at": timezone.now()})
    return secret


def sign(secret: str, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    at = at.astimezone(UTC).replace(microsecond=0)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode("utf-8"))}


# -- who may be called --------------------------------------------------------------------


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address, also when an IPv6 address carries an IPv4 one (mapped, 6to4, Teredo)."""
    if ip.version == 6:
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None and not _public(inner):
            return False
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified
                                 or ip.is_reserved or ip.is_multicast)


def notify_url_resolve(url: str) -> tuple[str, list[str]]:
    """(the URL's host, the addresses to connect to, first one first), refusing any that is not
    public unless the host is allowed (VTERM_WEBHOOK_ALLOWED_HOSTS). Raises AddressRefused,
    Unresolvable, or ValueError for a malformed URL."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)  # ValueError beyond 65535
    if not host:
        raise ValueError("it has no host")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if parts.hostname.startswith("["):
            raise ValueError(f"{parts.hostname!r} is not an IPv6 address") from None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"its host {host!r} does not resolve ({exc})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if host not in settings.VTERM["WEBHOOK_ALLOWED_HOSTS"]:
        refused = [str(a) for a in addresses if not _public(a)]
        if refused:
            raise AddressRefused(f"its host {host!r} is (or resolves to) {', '.join(refused)}: not a public "
                                 "address (loopback, private, link-local, ...); VTERM_WEBHOOK_ALLOWED_HOSTS "
                                 "lists the hosts allowed anyway")
    return host, [str(a) for a in addresses]


def notify_url_check(url: str | None) -> None:
    """At submission: 400 naming ``notify_url`` if the URL cannot be called (its shape is the serializer's)."""
    if not url:
        return
    try:
        notify_url_resolve(url)
    except (AddressRefused, Unresolvable, ValueError) as exc:
        raise ValidationError({"notify_url": [f"Cannot be called: {exc}."]}) from None


# -- deliveries ---------------------------------------------------------------------------


def _lease() -> timedelta:
    """How long a delivery handed to Celery is that task's alone (its POST's time limit, with room)."""
    return timedelta(seconds=3 * settings.VTERM["WEBHOOK_TIMEOUT"] + 60)


def deliveries_begin(commands: QuerySet) -> int:
    """Start a delivery for each of ``commands`` that has ended, has a notify_url and none yet
    (once per command: its row is unique). Sent to Celery once the caller's transaction commits."""
    rows = list(commands.filter(status__in=Command.FINAL).exclude(notify_url="")
                .filter(webhook_delivery__isnull=True).values_list("pk", "notify_url"))
    started = 0
    for command_id, url in rows:
        now = timezone.now()
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(command_id=command_id, url=url, next_attempt_at=now,
                                                          claimed_until=now + _lease())
        except IntegrityError:
            continue  # another path that ended it started its delivery
        transaction.on_commit(lambda pk=delivery.pk: _send(pk, 0))
        started += 1
    return started


def commands_ended(commands: list[Command]) -> None:
    """The hook of the places where commands end one by one (services.commands_finished)."""
    ids = [c.pk for c in commands if c is not None and c.notify_url]
    if ids:
        deliveries_begin(Command.objects.filter(pk__in=ids))


def _send(delivery_id, attempts: int, countdown: float | None = None) -> None:
    try:
        celery_app.send_task(DELIVER_TASK, args=[str(delivery_id), attempts], queue=WEBHOOK_QUEUE,
                             countdown=countdown)
    except Exception as exc:  # noqa: BLE001 (the sweep hands it out once its lease is over)
        log.warning("webhook delivery %s not queued (%s); the sweep will retry it", delivery_id, exc)


def deliveries_due() -> int:
    """Beat: hand out the deliveries whose attempt is due and that no task holds, and start those
    that an end path missed (a crash between a command's end and its delivery). The number handed out."""
    now = timezone.now()
    deliveries_begin(Command.objects.filter(finished_at__gte=now - timedelta(
        seconds=settings.VTERM["WEBHOOK_RETRY_FOR"])))
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    due = list(WebhookDelivery.objects.filter(free, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now)
               .order_by("next_attempt_at").values_list("pk", "attempts")[:SWEEP_BATCH])
    sent = 0
    for pk, attempts in due:
        if WebhookDelivery.objects.filter(free, pk=pk, attempts=attempts).update(claimed_until=now + _lease()):
            _send(pk, attempts)
            sent += 1
    return sent


def retry_delay(attempts: int) -> float:
    """Seconds from the ``attempts``-th failed attempt to the next: FIRST, then FACTOR times more
    each time, at most MAX_DELAY (defaults: 5 s, 15 s, 45 s, 2¼ min, ... 3 h)."""
    cfg = settings.VTERM
    return min(cfg["WEBHOOK_RETRY_FIRST"] * cfg["WEBHOOK_RETRY_FACTOR"] ** (attempts - 1), cfg["WEBHOOK_RETRY_MAX_DELAY"])


def delivery_attempt(delivery_id: str, attempts: int) -> str | None:
    """One POST of a delivery, by the task that holds it (``attempts``: the count it was handed out
    at; a task that lost the delivery to another does nothing). Its outcome, or None."""
    now = timezone.now()
    if not WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING,
                                          attempts=attempts).update(attempts=attempts + 1,
                                                                    claimed_until=now + _lease()):
        return None
    delivery = WebhookDelivery.objects.select_related("command__session").filter(pk=delivery_id).first()
    if delivery is None:
        return None  # purged with its command meanwhile
    body = _renderer.render(command_json(delivery.command))
    secret = _secret_of(delivery.command.session.owner_id).secret  # the session owner's
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               **sign(secret, f"msg_{delivery.pk.hex}", now, body)}
    began = time.monotonic()
    address, code, error, final = "", None, "", False
    try:
        host, addresses = notify_url_resolve(delivery.url)
        for i, address in enumerate(addresses):  # each address it resolves to, until one connects
            try:
                code = _post(delivery.url, host, address, body, headers)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if i == len(addresses) - 1:
                    raise
        if not 200 <= code < 300:
            error = f"answered {code}"
    except AddressRefused as exc:
        error, final = f"refused: {exc}", True  # not retried: the rule will not change by itself
    except ValueError as exc:
        error, final = f"malformed URL: {exc}", True
    except (Unresolvable, httpx.HTTPError, OSError) as exc:
        error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    duration_ms = (time.monotonic() - began) * 1000
    WebhookAttempt.objects.create(delivery=delivery, at=now, address=address, status_code=code, error=error[:500],
                                  duration_ms=duration_ms)
    return _delivery_after(delivery, attempts + 1, ok=not error, error=error, final=final)


def _delivery_after(delivery: WebhookDelivery, attempts: int, *, ok: bool, error: str, final: bool) -> str:
    """Record an attempt's outcome on its delivery: delivered, failed, or the next attempt scheduled."""
    now = timezone.now()
    done = {"next_attempt_at": None, "claimed_until": None, "finished_at": now, "last_error": error[:500]}
    rows = WebhookDelivery.objects.filter(pk=delivery.pk)
    if ok:
        rows.update(status=WebhookDelivery.Status.DELIVERED, **done)
        return "delivered"
    delay = retry_delay(attempts)
    due = now + timedelta(seconds=delay)
    if final or due > delivery.created_at + timedelta(seconds=settings.VTERM["WEBHOOK_RETRY_FOR"]):
        if not final:
            done["last_error"] = f"{error}; given up after {attempts} attempts"[:500]
        rows.update(status=WebhookDelivery.Status.FAILED, **done)
        log.info("webhook %s for command %s failed: %s", delivery, delivery.command_id, done["last_error"])
        return "failed"
    short = delay <= settings.VTERM["WEBHOOK_COUNTDOWN_MAX"]
    rows.update(next_attempt_at=due, last_error=error[:500],
                claimed_until=due + _lease() if short else None)
    if short:
        _send(delivery.pk, attempts, countdown=delay)
    return "retry"


def _post(url: str, host: str, address: str, body: bytes, headers: dict) -> int:
    """POST to ``address`` (checked already) as to ``url``: Host header and TLS name (SNI, certificate)
    are the URL's host. No redirects, no proxies from the environment; the answer's body is not read."""
    parts = urlsplit(url)
    ip = ipaddress.ip_address(address)
    netloc = (f"[{ip}]" if ip.version == 6 else str(ip)) + (f":{parts.port}" if parts.port else "")
    target = urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
    with (httpx.Client(timeout=settings.VTERM["WEBHOOK_TIMEOUT"], follow_redirects=False, trust_env=False) as client,
          client.stream("POST", target, content=body, headers={**headers, "host": parts.netloc},
                        extensions=extensions) as response):
        return response.status_code
