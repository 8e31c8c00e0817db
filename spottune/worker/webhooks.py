"""Webhook deliveries: every job's terminal state POSTed, signed, to the clinic's webhooks.

Runs as a loop thread in the worker's main process (next to the reconciler), never in a request.
Each pass (1) writes a pending delivery for every (webhook, job) pair whose job ended after the
webhook was registered and has none yet - whichever code path ended the job (worker, cancel,
reconciler) - and (2) sends the deliveries that are due. A failed attempt (no answer, or not
2xx) is retried after ``webhook_retry_base_s * 2**(attempt-1)`` seconds (at most an hour) until
``webhook_max_attempts``; then the delivery is marked failed. Every pass is bounded (``BATCH``).
Several workers may run this loop: the unique (webhook, job) row and an atomic claim keep each
attempt to one sender.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from spottune import signing
from spottune.core import webhooks as repo
from spottune.core.db import get_session_factory, session_scope
from spottune.core.job_view import job_out
from spottune.core.models import DeliveryStatus, Job, Webhook, WebhookDelivery, utcnow
from spottune.core.settings import Settings, get_settings
from spottune.core.webhooks import UnsafeAddress, check_destination

logger = logging.getLogger(__name__)

BATCH = 50
# Jobs that ended longer ago are not announced any more (e.g. after a long worker outage): it
# keeps every pass's scan small however long the job history grows.
LOOKBACK = timedelta(days=2)
MAX_BACKOFF_S = 3600.0
MAX_ERROR_CHARS = 500
USER_AGENT = "spottune-webhooks/1"


@dataclass
class DispatchReport:
    created: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def backoff_s(settings: Settings, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1`` (``attempts`` >= 1 already made)."""
    return float(min(settings.webhook_retry_base_s * 2 ** (attempts - 1), MAX_BACKOFF_S))


def payload(delivery: WebhookDelivery, job: Job) -> bytes:
    """The JSON body: the event, ids, and the job as ``GET /v1/jobs/{id}`` shows it."""
    body: dict[str, Any] = {
        "event": delivery.event,
        "delivery_id": str(delivery.id),
        "webhook_id": str(delivery.webhook_id),
        "job": job_out(job).model_dump(mode="json"),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _create_pending(factory: sessionmaker[Session], report: DispatchReport) -> None:
    now = utcnow()
    with factory() as session:
        pairs = [(hook.id, job.id, job.status.value)
                 for hook, job in repo.undelivered_terminal_jobs(session, now - LOOKBACK, BATCH)]
    for webhook_id, job_id, status in pairs:
        try:
            with session_scope(factory) as session:
                session.add(WebhookDelivery(
                    id=uuid.uuid4(), webhook_id=webhook_id, job_id=job_id, event=f"job.{status}",
                    status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now))
        except IntegrityError:
            continue  # another dispatcher wrote it first
        report.created += 1


def _attempt(client: httpx.Client, settings: Settings, url: str, secret: str,
             delivery_id: uuid.UUID, event: str, body: bytes) -> tuple[int | None, str | None]:
    """POST once: (HTTP status, error) - error None when the receiver acknowledged (2xx)."""
    try:
        check_destination(url, settings.webhooks_may_reach_private_networks)
        response = client.post(url, content=body, headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            signing.EVENT_HEADER: event,
            signing.DELIVERY_HEADER: str(delivery_id),
            signing.SIGNATURE_HEADER: signing.sign(secret, body),
        })
    except UnsafeAddress as exc:
        return None, f"refused: {exc}"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


def _send_one(factory: sessionmaker[Session], settings: Settings, client: httpx.Client,
              delivery_id: uuid.UUID, report: DispatchReport) -> None:
    now = utcnow()
    lease = now + timedelta(seconds=2 * settings.webhook_timeout_s + 30)
    with session_scope(factory) as session:
        if not repo.claim(session, delivery_id, now, lease):
            return  # another dispatcher took it
        delivery = session.get(WebhookDelivery, delivery_id)
        hook = session.get(Webhook, delivery.webhook_id) if delivery else None
        job = session.get(Job, delivery.job_id) if delivery else None
        if delivery is None or hook is None or job is None:
            return
        url, secret, event, body = hook.url, hook.secret, delivery.event, payload(delivery, job)
    status_code, error = _attempt(client, settings, url, secret, delivery_id, event, body)
    with session_scope(factory) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:  # the webhook was deleted meanwhile
            return
        delivery.attempts += 1
        delivery.response_status = status_code
        delivery.error = error
        if error is None:
            delivery.status, delivery.delivered_at = DeliveryStatus.DELIVERED, utcnow()
            report.delivered += 1
        elif delivery.attempts >= settings.webhook_max_attempts:
            delivery.status = DeliveryStatus.FAILED
            report.failed += 1
            logger.warning("webhook delivery %s failed for good: %s", delivery_id, error)
        else:
            delay = backoff_s(settings, delivery.attempts)
            delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
            report.retrying += 1
            logger.info("webhook delivery %s: %s; retry in %.1f s", delivery_id, error, delay)


def dispatch_once(settings: Settings | None = None, client: httpx.Client | None = None
                  ) -> DispatchReport:
    """One pass: write new deliveries, send the due ones (at most ``BATCH`` of each)."""
    settings = settings or get_settings()
    factory = get_session_factory(settings)
    report = DispatchReport()
    _create_pending(factory, report)
    with factory() as session:
        due = repo.due_ids(session, utcnow(), BATCH)
    if not due:
        return report
    own = client is None
    http = client or new_client(settings)
    try:
        for delivery_id in due:
            _send_one(factory, settings, http, delivery_id, report)
    finally:
        if own:
            http.close()
    return report


def new_client(settings: Settings) -> httpx.Client:
    # No redirects (a receiver cannot bounce us elsewhere); no proxies from the environment.
    return httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False,
                        trust_env=False)


def run_forever(stop: threading.Event, settings: Settings | None = None) -> None:
    """Dispatch every ``webhook_poll_interval_s`` until ``stop`` is set (a daemon thread)."""
    settings = settings or get_settings()
    with new_client(settings) as client:
        while not stop.wait(settings.webhook_poll_interval_s):
            try:
                report = dispatch_once(settings, client)
            except Exception:  # a database hiccup must not end the loop; next pass retries
                logger.warning("webhook dispatch pass failed", exc_info=True)
                continue
            if report.created or report.delivered or report.failed:
                logger.info("webhooks: %s", report.as_dict())
