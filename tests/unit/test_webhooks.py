"""Completion webhooks' logic against the test database (sessions/webhooks.py): the default retry
schedule, one delivery per command whichever way it ended (backend loss included), and an address
refused at delivery time ending the delivery at once. Nothing here connects anywhere: the only URL
attempted is on 127.0.0.2, refused before any connection. The live run is tests/integration/test_webhooks.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from standardwebhooks import Webhook

from sessions import failover, services, webhooks
from sessions.models import Backend, Command, TerminalSession, WebhookDelivery

HOOK = "http://127.0.0.2:9/hook"


def test_the_default_schedule_retries_twice_within_a_minute_then_backs_off_for_a_day(settings):
    delays = [webhooks.retry_delay(n) for n in range(1, 30)]
    assert delays[0] >= 1 and delays[0] + delays[1] <= 60, "the first two retries within a minute"
    assert all(b >= a for a, b in pairwise(delays)) and delays[2] > delays[1], "growing"
    elapsed, attempts = 0.0, 1
    for d in delays:
        if elapsed + d > settings.VTERM["WEBHOOK_RETRY_FOR"]:
            break
        elapsed, attempts = elapsed + d, attempts + 1
    assert 20 * 3600 < elapsed <= 24 * 3600, "retries go on for (almost) the whole 24 h"
    assert attempts < 30


def test_the_signature_is_the_specs():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    at = datetime(2026, 12, 2, 12, 0, 0, 500000, tzinfo=UTC)
    headers = webhooks.sign(secret, "msg_1", at, b'{"a":1}')
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    # The package's own check needs a timestamp within 5 minutes of now: sign one for now.
    now = webhooks.sign(secret, "msg_1", timezone.now(), b'{"a":1}')
    assert Webhook(secret).verify(b'{"a":1}', now) == {"a": 1}


@pytest.fixture
def session(db):
    owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    backend = Backend.objects.create(id=f"b-{uuid.uuid4().hex[:6]}", hostname="h", last_heartbeat=timezone.now())
    return TerminalSession.objects.create(owner=owner, backend=backend, epoch=1, status="active")


def _command(session, seq: int, notify_url: str = HOOK, status: str = "running") -> Command:
    return Command.objects.create(session=session, seq=seq, command="sleep 9", status=status, notify_url=notify_url)


def test_every_way_of_ending_starts_one_delivery_and_only_for_commands_with_a_url(session,
                                                                                  django_capture_on_commit_callbacks):
    lost, plain, moved = _command(session, 1), _command(session, 2, notify_url=""), _command(session, 3)
    with django_capture_on_commit_callbacks() as sent:
        failover._commands_end(session.pk, [Command.Status.RUNNING], "its backend was lost")  # backend loss
    assert set(WebhookDelivery.objects.values_list("command_id", flat=True)) == {lost.pk, moved.pk}
    assert len(sent) == 2, "each handed to Celery once the ending transaction commits"

    queued = _command(session, 4, status="queued")
    services._commands_interrupt_unfinished(session, "the session ended")
    failover._command_end(queued, "again")  # a second end changes nothing, starts nothing
    assert WebhookDelivery.objects.filter(command=queued).count() == 1
    assert WebhookDelivery.objects.count() == 3 and not WebhookDelivery.objects.filter(command=plain).exists()
    assert webhooks.deliveries_begin(Command.objects.all()) == 0, "once per command"


def test_an_address_refused_at_delivery_fails_it_at_once_without_connecting(session, settings):
    settings.VTERM = {**settings.VTERM, "WEBHOOK_ALLOWED_HOSTS": []}
    cmd = _command(session, 1, status="succeeded")
    webhooks.deliveries_begin(Command.objects.filter(pk=cmd.pk))
    delivery = WebhookDelivery.objects.get(command=cmd)

    assert webhooks.delivery_attempt(str(delivery.pk), attempts=5) is None, "not the holder: does nothing"
    assert webhooks.delivery_attempt(str(delivery.pk), attempts=0) == "failed"
    delivery.refresh_from_db()
    attempt = delivery.attempt_rows.get()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 1, None)
    assert attempt.status_code is None and attempt.address == "" and "not a public address" in attempt.error
    assert webhooks.delivery_attempt(str(delivery.pk), attempts=1) is None, "a failed delivery is not tried again"
