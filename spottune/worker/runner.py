"""Job lifecycle in the database: load, claim, heartbeat + progress + cancel polling, finish.

The broker only carries a job id; everything else is re-read here. A job is *claimed* by one
atomic UPDATE (queued -> running, or running with a stale heartbeat -> running again), so a
message delivered twice, or re-sent by the reconciler, runs the job at most once at a time.
Every later write is guarded by ``attempts == <this attempt>``: a worker that lost its job
(declared dead, then re-claimed elsewhere) stops without touching it.
"""

from __future__ import annotations

import importlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from sqlalchemy import and_, func, or_, update
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.db import get_session_factory, session_scope
from spottune.app.models import Job, JobKind, JobStatus, utcnow
from spottune.app.settings import Settings, get_settings
from spottune.ml.train import Cancelled, Progress
from spottune.worker import results
from spottune.worker.results import JobLost

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0  # progress flush + cancel check period (a cancelled job stops in ~1-2 s)
MAX_ERROR_CHARS = 2000
CANCELLED_REASON = "cancelled by the clinic"  # as the API words it for a queued job


@dataclass
class JobContext:
    """What a job function needs: ids, validated params, a device and the lifecycle hooks."""

    job_id: uuid.UUID
    clinic_id: uuid.UUID
    kind: JobKind
    params: dict[str, Any]
    attempt: int
    settings: Settings
    session_factory: sessionmaker[Session]
    device: torch.device
    monitor: JobMonitor

    def progress(self, step: int, total: int, loss: float | None = None,
                 eta_seconds: float | None = None) -> None:
        """Record progress (flushed ~1/s); raises Cancelled once a stop was requested."""
        self.monitor.report(step, total, loss, eta_seconds)

    def ml_progress(self, progress: Progress) -> None:
        """Adapter for the ``progress`` callback of :mod:`spottune.ml.train`."""
        self.progress(progress.step, progress.total, progress.loss, progress.eta_seconds)

    def should_stop(self) -> bool:
        return self.monitor.stop_requested

    def check_stop(self) -> None:
        """Raise Cancelled (or JobLost) if the job should stop now."""
        self.monitor.check()


class JobMonitor:
    """A thread that writes heartbeat + latest progress each second and polls for a cancel.

    The training loop only stores numbers in memory (no database work on the hot path); one
    short transaction per second carries them. A cancel request, or losing the job, sets
    ``stop_requested`` which ``should_stop()`` and the progress callback read.
    """

    def __init__(self, factory: sessionmaker[Session], job_id: uuid.UUID, attempt: int,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self._factory = factory
        self._job_id = job_id
        self._attempt = attempt
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"job-{job_id}", daemon=True)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def report(self, step: int, total: int, loss: float | None, eta_seconds: float | None) -> None:
        with self._lock:
            self._pending = {"progress_step": int(step), "progress_total": int(total),
                             "loss": None if loss is None else float(loss),
                             "eta_seconds": None if eta_seconds is None else float(eta_seconds)}
        self.check()

    def check(self) -> None:
        if self._stop.is_set():
            raise JobLost(str(self._job_id)) if self.lost else Cancelled("cancel requested")

    def _loop(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # a database hiccup must not kill the job; retry next tick
                logger.warning("job %s: heartbeat failed", self._job_id, exc_info=True)

    def flush(self) -> None:
        """Write heartbeat and pending progress; read cancel_requested (one short transaction)."""
        with self._lock:
            values, self._pending = self._pending, {}
        with session_scope(self._factory) as session:
            cancel = session.execute(
                update(Job)
                .where(Job.id == self._job_id, Job.status == JobStatus.RUNNING,
                       Job.attempts == self._attempt)
                .values(heartbeat_at=utcnow(), **values)
                .returning(Job.cancel_requested)
            ).scalar_one_or_none()
        if cancel is None:
            self.lost = True
            self._stop.set()
        elif cancel:
            self._stop.set()


def claim(session: Session, job_id: uuid.UUID, worker: str, settings: Settings) -> int | None:
    """Atomically take the job; returns this attempt's number, or None if it is not ours to run."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
    attempt = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.QUEUED,
                and_(Job.status == JobStatus.RUNNING,
                     Job.attempts < settings.job_max_attempts,
                     or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
            ),
        )
        .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now), worker=worker[:200],
                progress_step=0, loss=None, eta_seconds=None, error=None)
        .returning(Job.attempts)
    ).scalar_one_or_none()
    return attempt


def finish(session: Session, job_id: uuid.UUID, attempt: int, status: JobStatus,
           error: str | None = None) -> bool:
    """Move our running attempt to a terminal status without results; False if not ours."""
    updated = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt)
        .values(status=status, error=error, finished_at=utcnow(), eta_seconds=None)
        .returning(Job.id)
    ).scalar_one_or_none()
    return updated is not None


def describe(exc: BaseException) -> str:
    """A reason a clinic can read: exception type and message, no stack trace."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


JobFunction = Callable[[JobContext], results.JobOutput]


def job_function(kind: JobKind) -> JobFunction:
    """``spottune.worker.jobs.<kind>.run`` (imported on first use)."""
    module = importlib.import_module(f"spottune.worker.jobs.{kind.value}")
    function: JobFunction = module.run
    return function


def _prepare(session: Session, job_id: uuid.UUID, worker: str,
             settings: Settings) -> tuple[Job, int] | str:
    """Load the job; settle it if it needs no run, else claim it: (job, attempt) or why not."""
    job = session.get(Job, job_id)
    if job is None:
        return "missing"
    if job.status.terminal:
        return f"already {job.status.value}"
    if job.cancel_requested and job.status == JobStatus.QUEUED:
        job.status, job.finished_at, job.error = JobStatus.CANCELLED, utcnow(), CANCELLED_REASON
        return "cancelled before start"
    done = results.existing_result(session, job_id)
    if done is not None:  # a redelivered message after results were stored
        results.mark_succeeded(job, done)
        return "results already stored"
    attempt = claim(session, job_id, worker, settings)
    if attempt is None:
        return "not claimable (running elsewhere or cancelled)"
    session.refresh(job)
    return job, attempt


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
        prepared = _prepare(session, jid, worker, settings)
        if isinstance(prepared, str):
            logger.info("job %s: %s", jid, prepared)
            return prepared
        job, attempt = prepared
        kind, clinic_id, params = job.kind, job.clinic_id, dict(job.params)

    if device is None:
        from spottune.ml.device import pick_device

        device = pick_device("cpu" if params.get("device") == "cpu" else None)
    monitor = JobMonitor(factory, jid, attempt)
    ctx = JobContext(job_id=jid, clinic_id=clinic_id, kind=kind, params=params, attempt=attempt,
                     settings=settings, session_factory=factory, device=device, monitor=monitor)
    logger.info("job %s (%s) attempt %d started on %s", jid, kind.value, attempt, device)
    monitor.start()
    try:
        output = job_function(kind)(ctx)
        monitor.close()
        with session_scope(factory) as session:
            outcome = results.store(session, jid, attempt, output)
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
        return finish(session, job_id, attempt, status, error)

