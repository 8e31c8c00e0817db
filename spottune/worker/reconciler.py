"""Reconciler: the database is the truth, the broker may forget (Redis here keeps nothing on disk).

Every ``reconcile_interval_s`` it
- re-sends queued jobs whose message seems lost (enqueued longer than ``resend_after`` ago and no
  message for them visible in the broker);
- re-queues running jobs whose heartbeat stopped (worker killed, machine lost), until
  ``job_max_attempts`` attempts were made; then fails them with a reason;
- settles cancel requests whose worker is gone;
- drops result blobs a stopped worker left staged (see :mod:`spottune.worker.results`).
Each change is a compare-and-set UPDATE, so several workers reconciling at once send one message
per job; a duplicate message would be harmless anyway (the runner claims jobs atomically).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from celery import Celery

from spottune.contract import JobStatus
from spottune.core.blobs import abandoned_staged, discard_blobs
from spottune.core.broker import Queue, TaskName, queue_for
from spottune.core.db import get_session_factory, session_scope
from spottune.core.job_state import (
    CANCELLED_REASON,
    overdue_queued,
    silent_running,
    update_if_unchanged,
)
from spottune.core.models import Job, utcnow
from spottune.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

BATCH = 100  # jobs looked at per pass and kind of repair
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's separator for the priority sub-queues of a Redis queue


@dataclass
class ReconcileReport:
    resent: int = 0
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    discarded: int = 0  # staged blobs of jobs that no longer run

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def resend_after(settings: Settings) -> timedelta:
    """How long a queued job may wait before its message is presumed lost."""
    return timedelta(seconds=2 * settings.reconcile_interval_s)


def queued_in_broker(app: Celery) -> set[str] | None:
    """Job ids of messages waiting (or delivered, unacknowledged) in the broker; None if unknown."""
    queues = [q.value for q in Queue]
    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            if conn.transport_cls in ("redis", "rediss"):
                client = channel.client
                raw = []
                for queue in queues:
                    for key in [queue] + [f"{queue}{REDIS_PRIORITY_SEP}{p}" for p in (3, 6, 9)]:
                        raw.extend(client.lrange(key, 0, -1))
                raw.extend(client.hvals(channel.unacked_key))
                texts = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
            elif conn.transport_cls == "filesystem":
                folder = Path(channel.data_folder_in)
                texts = [p.read_text() for q in queues for p in folder.glob(f"*.{q}.msg")]
            else:
                return None
    except Exception:
        logger.warning("could not inspect the broker queue", exc_info=True)
        return None
    found: set[str] = set()
    for text in texts:
        try:
            message = json.loads(text)
            if isinstance(message, list):  # Redis "unacked": [message, exchange, routing key]
                message = message[0]
            argsrepr = message["headers"]["argsrepr"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        found.update(UUID_RE.findall(str(argsrepr)))
    return found


def _send(app: Celery, job: Job) -> None:
    app.send_task(TaskName.RUN_JOB.value, args=[str(job.id)], queue=queue_for(job.params).value)


def _resend_lost(app: Celery, settings: Settings, report: ReconcileReport) -> None:
    now = utcnow()
    cutoff = now - resend_after(settings)
    factory = get_session_factory(settings)
    with session_scope(factory) as session:
        jobs = overdue_queued(session, cutoff, BATCH)
    if not jobs:
        return
    waiting = queued_in_broker(app)
    for job in jobs:
        if waiting is not None and str(job.id) in waiting:
            continue
        with session_scope(factory) as session:
            if job.cancel_requested:
                if update_if_unchanged(session, job, "enqueued_at", job.enqueued_at,
                                       status=JobStatus.CANCELLED, finished_at=now,
                                       error=CANCELLED_REASON):
                    report.cancelled += 1
                continue
            if not update_if_unchanged(session, job, "enqueued_at", job.enqueued_at,
                                       enqueued_at=now):
                continue  # another reconciler (or the API) got there first
        logger.warning("job %s: queued since %s with no message in the broker; re-sending",
                       job.id, job.enqueued_at)
        _send(app, job)
        report.resent += 1


def _repair_stale(app: Celery, settings: Settings, report: ReconcileReport) -> None:
    now = utcnow()
    stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
    factory = get_session_factory(settings)
    with session_scope(factory) as session:
        jobs = silent_running(session, stale, BATCH)
    for job in jobs:
        silent = f"no heartbeat for {settings.heartbeat_timeout_s:.0f} s"
        with session_scope(factory) as session:
            if job.cancel_requested:
                if update_if_unchanged(session, job, "heartbeat_at", job.heartbeat_at,
                                       status=JobStatus.CANCELLED, finished_at=now,
                                       error=CANCELLED_REASON):
                    report.cancelled += 1
                continue
            if job.attempts >= settings.job_max_attempts:
                reason = (f"WorkerLost: the worker running this job stopped ({silent}) on each of "
                          f"{job.attempts} attempts; giving up")
                if update_if_unchanged(session, job, "heartbeat_at", job.heartbeat_at,
                                       status=JobStatus.FAILED, error=reason,
                                       finished_at=now, eta_seconds=None):
                    logger.error("job %s failed: %s", job.id, reason)
                    report.failed += 1
                continue
            if not update_if_unchanged(session, job, "heartbeat_at", job.heartbeat_at,
                                       status=JobStatus.QUEUED, enqueued_at=now,
                                       worker=None, eta_seconds=None):
                continue
        logger.warning("job %s: worker %s lost (%s), attempt %d of %d; re-queued",
                       job.id, job.worker, silent, job.attempts, settings.job_max_attempts)
        _send(app, job)
        report.requeued += 1


def _sweep_staged(settings: Settings, report: ReconcileReport) -> None:
    factory = get_session_factory(settings)
    with session_scope(factory) as session:
        abandoned = abandoned_staged(session, BATCH)
    if abandoned:
        discard_blobs(factory, abandoned)
        logger.warning("dropped %d result blobs left staged by stopped workers", len(abandoned))
        report.discarded += len(abandoned)


def reconcile_once(app: Celery, settings: Settings | None = None) -> ReconcileReport:
    """One pass over stale jobs (see the module docstring); returns what it changed."""
    settings = settings or get_settings()
    report = ReconcileReport()
    _repair_stale(app, settings, report)
    _resend_lost(app, settings, report)
    _sweep_staged(settings, report)
    if any(report.as_dict().values()):
        logger.info("reconciler: %s", report.as_dict())
    return report


def run_forever(app: Celery, stop: threading.Event, settings: Settings | None = None) -> None:
    """Reconcile every ``reconcile_interval_s`` until ``stop`` is set (a worker thread's loop)."""
    settings = settings or get_settings()
    while not stop.wait(settings.reconcile_interval_s):
        try:
            reconcile_once(app, settings)
        except Exception:  # the database or broker may be briefly away; try again next time
            logger.warning("reconciler pass failed", exc_info=True)
