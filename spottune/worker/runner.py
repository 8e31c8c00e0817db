"""Running one job: load it, claim it, call its handler, store the outcome.

The broker only carries a job id; everything else is re-read here. A job is *claimed* by one
atomic UPDATE (queued -> running, or running with a stale heartbeat -> running again), so a
message delivered twice, or re-sent by the reconciler, runs the job at most once at a time.
Every later write is guarded by the attempt number (see :mod:`spottune.core.job_state`).
"""

from __future__ import annotations

import logging
import uuid

import torch
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from spottune.contract import JobStatus, parse_params
from spottune.core import fairshare, job_state
from spottune.core.broker import Queue, queue_for
from spottune.core.db import get_session_factory, session_scope
from spottune.core.job_state import CANCELLED_REASON, JobLost
from spottune.core.models import Job
from spottune.core.settings import Settings, get_settings
from spottune.ml.loop import Cancelled
from spottune.worker import results
from spottune.worker.context import JobContext
from spottune.worker.monitor import JobMonitor
from spottune.worker.registry import HANDLERS

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
PICK_TRIES = 5  # queued jobs tried per message when other workers claim them first


def describe(exc: BaseException) -> str:
    """A reason a clinic can read: exception type and message, no stack trace."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _prepare(session: Session, job_id: uuid.UUID, worker: str,
             settings: Settings) -> tuple[Job, int] | str:
    """Load the job; settle it if it needs no run, else claim it: (job, attempt) or why not."""
    job = session.get(Job, job_id)
    if job is None:
        return "missing"
    if job.status.terminal:
        return f"already {job.status.value}"
    if job.cancel_requested and job.status == JobStatus.QUEUED:
        job_state.cancel_unstarted(job)
        return "cancelled before start"
    done = job_state.existing_result(session, job_id)
    if done is not None:  # a redelivered message after results were stored
        job_state.mark_succeeded(job, done)
        return "results already stored"
    attempt = job_state.claim(session, job_id, worker, settings.job_max_attempts,
                              settings.heartbeat_timeout_s)
    if attempt is None:
        return "not claimable (running elsewhere or cancelled)"
    session.refresh(job)
    return job, attempt


def _take_turn(session: Session, job_id: uuid.UUID, worker: str,
               settings: Settings) -> tuple[Job, int] | str:
    """A message is a turn for the queued job fair share picks (see :mod:`spottune.core.fairshare`)
    among the jobs of its queue; the job it names is tried last (it may need settling, or
    re-claiming after a lost worker)."""
    named = session.get(Job, job_id)
    queue = queue_for(named.params) if named is not None else Queue.GPU  # where it came from
    tried: dict[uuid.UUID, str] = {}  # job -> why it was not run
    while len(tried) < PICK_TRIES:
        candidate = fairshare.next_job(session, exclude=tried, queue=queue)
        if candidate is None:
            break
        prepared = _prepare(session, candidate, worker, settings)
        if not isinstance(prepared, str):
            if candidate != job_id:
                logger.info("message for job %s runs job %s (fair share)", job_id, candidate)
            return prepared
        tried[candidate] = prepared
    if job_id in tried:
        return tried[job_id]
    return _prepare(session, job_id, worker, settings)


def run_job(job_id: str, worker: str = "worker", *, settings: Settings | None = None,
            device: torch.device | None = None) -> str:
    """Run one job to a terminal state; returns a short outcome (for logs and tests).

    Never raises for a failure of the job itself: the job is marked failed and the worker goes
    on. Database outages do propagate; the reconciler re-sends the job once its heartbeat stops.
    """
    settings = settings or get_settings()
    factory = get_session_factory(settings)
    try:
        jid = uuid.UUID(str(job_id))
    except ValueError:
        logger.error("ignoring message with a malformed job id %r", job_id)
        return "malformed id"
    with session_scope(factory) as session:
        prepared = _take_turn(session, jid, worker, settings)
        if isinstance(prepared, str):
            logger.info("job %s: %s", jid, prepared)
            return prepared
        job, attempt = prepared
        jid = job.id  # fair share may have picked another job than the message names
        kind, clinic_id, raw_params = job.kind, job.clinic_id, dict(job.params)

    if device is None:
        from spottune.ml.device import pick_device

        device = pick_device("cpu" if raw_params.get("device") == "cpu" else None)
    monitor = JobMonitor(factory, jid, attempt)
    logger.info("job %s (%s) attempt %d started on %s", jid, kind.value, attempt, device)
    monitor.start()
    try:
        try:
            params = parse_params(kind, raw_params)
        except ValidationError as exc:  # params are validated on submission; stored ones drifted
            raise ValueError(f"stored job params are invalid: {exc}") from None
        ctx = JobContext(job_id=jid, clinic_id=clinic_id, kind=kind, params=params,
                         attempt=attempt, settings=settings, session_factory=factory,
                         device=device, monitor=monitor)
        output = HANDLERS[kind](ctx)
        # The monitor keeps beating while the result is written, and stops the write at a cancel.
        outcome = results.store(factory, jid, attempt, output, check=monitor.check)
    except JobLost:
        outcome = "lost"
    except Cancelled:
        cancelled = _settle(factory, jid, attempt, JobStatus.CANCELLED, CANCELLED_REASON)
        outcome = "cancelled" if cancelled else "lost"
    except Exception as exc:
        logger.exception("job %s failed", jid)
        failed = _settle(factory, jid, attempt, JobStatus.FAILED, describe(exc))
        outcome = "failed" if failed else "lost"
    finally:
        monitor.close()
        if device.type == "cuda":  # a long-lived worker hands GPU memory back between jobs
            torch.cuda.empty_cache()
    logger.info("job %s attempt %d: %s", jid, attempt, outcome)
    return outcome


def _settle(factory: sessionmaker[Session], job_id: uuid.UUID, attempt: int, status: JobStatus,
            error: str | None = None) -> bool:
    with session_scope(factory) as session:
        return job_state.finish(session, job_id, attempt, status, error)

