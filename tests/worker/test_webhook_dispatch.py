"""The webhook dispatcher on Postgres: which jobs are sent, backoff, giving up, private hosts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from spottune import signing
from spottune.core.models import (
    DeliveryStatus,
    JobKind,
    JobStatus,
    Webhook,
    WebhookDelivery,
    utcnow,
)
from spottune.core.settings import get_settings
from spottune.worker.webhooks import backoff_s, dispatch_once
from tests.receiver import Receiver
from tests.worker.helpers import add_clinic, add_job

SECRET = "dispatch-test-secret-0123"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


def _setup(factory, url: str) -> tuple[object, object, object]:  # type: ignore[no-untyped-def]
    now = utcnow()
    with factory.begin() as session:
        clinic = add_clinic(session)
        old = add_job(session, clinic, JobKind.SEGMENTATION, {}, status=JobStatus.SUCCEEDED,
                      finished_at=now - timedelta(minutes=5))
        hook = Webhook(clinic_id=clinic, url=url, secret=SECRET, created_at=now)
        session.add(hook)
        session.flush()
        new = add_job(session, clinic, JobKind.SEGMENTATION, {}, status=JobStatus.FAILED,
                      error="boom", finished_at=now + timedelta(seconds=1))
        add_job(session, clinic, JobKind.SEGMENTATION, {}, status=JobStatus.RUNNING)
        return hook.id, old, new


def _deliveries(factory, hook_id) -> list[WebhookDelivery]:  # type: ignore[no-untyped-def]
    with factory() as session:
        stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)
        return list(session.scalars(stmt))


def test_only_jobs_ended_after_registration_are_sent_and_a_refusal_is_retried(
    factory, receiver: Receiver
) -> None:
    settings = get_settings().model_copy(update={"webhook_retry_base_s": 0.2})
    hook_id, _, new = _setup(factory, receiver.url)
    first = dispatch_once(settings)
    assert (first.created, first.retrying, first.delivered) == (1, 1, 0)
    assert dispatch_once(settings).delivered == 0  # not due before its backoff
    time.sleep(0.3)
    assert dispatch_once(settings).delivered == 1
    [delivery] = _deliveries(factory, hook_id)
    assert delivery.job_id == new and delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 2 and delivery.event == "job.failed"
    headers, body, _ = receiver.received[-1]
    signing.verify(SECRET, headers["Spottune-Signature"], body)
    assert json.loads(body)["job"]["error"] == "boom"
    assert dispatch_once(settings).as_dict() == {"created": 0, "delivered": 0, "retrying": 0,
                                                 "failed": 0}


def test_gives_up_after_the_last_attempt(factory) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings().model_copy(
        update={"webhook_retry_base_s": 0.01, "webhook_max_attempts": 2, "webhook_timeout_s": 2}
    )
    hook_id, _, _ = _setup(factory, "http://127.0.0.1:9/nobody-listens")
    dispatch_once(settings)
    time.sleep(0.05)
    assert dispatch_once(settings).failed == 1
    [delivery] = _deliveries(factory, hook_id)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 2
    assert "ConnectError" in (delivery.error or "")


def test_private_destinations_are_refused_when_not_allowed(
    factory, receiver: Receiver
) -> None:
    settings = get_settings().model_copy(update={"webhook_allow_private_networks": False})
    hook_id, _, _ = _setup(factory, receiver.url)
    dispatch_once(settings)
    [delivery] = _deliveries(factory, hook_id)
    assert receiver.received == [] and "private address" in (delivery.error or "")


def test_backoff_doubles_up_to_an_hour() -> None:
    settings = get_settings().model_copy(update={"webhook_retry_base_s": 5.0})
    assert [backoff_s(settings, n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert backoff_s(settings, 30) == 3600.0


def test_stale_or_altered_signatures_are_refused() -> None:
    body = b'{"event":"job.succeeded"}'
    header = signing.sign(SECRET, body, timestamp=1_000)
    assert signing.verify(SECRET, header, body, now=1_100) == 1_000
    with pytest.raises(signing.SignatureError, match="timestamp"):
        signing.verify(SECRET, header, body, now=1_000 + 3600)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(SECRET, header, body + b" ", now=1_100)
    with pytest.raises(signing.SignatureError, match="no Spottune-Signature"):
        signing.verify(SECRET, None, body)
