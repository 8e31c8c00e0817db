"""Every write to a job's state, in one place: create, cancel, claim, heartbeat, finish, repair.

The API creates and cancels jobs; the worker claims, beats, finishes and repairs them. Each
worker-side write is a compare-and-set UPDATE guarded by the attempt number (or by the value it
read), so a worker that lost its job (declared dead, then re-claimed elsewhere) changes nothing,
and several reconcilers acting at once repair a job once. None of these functions commits: the
request or task boundary does.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from statistics import fmean
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from spottune.contract import JobKind, JobStatus, MetricsSummary, PhaseMean, ScanScore
from spottune.core.models import Job, Mask, Metric, Model, utcnow

CANCELLED_REASON = "cancelled by the clinic"


class JobLost(Exception):
    """This worker no longer owns the job (re-claimed after a stale heartbeat, or finished)."""


# --- the API's writes -------------------------------------------------------------------------

def create(session: Session, clinic_id: uuid.UUID, kind: JobKind, params: dict[str, Any]) -> Job:
    """A queued job with validated ``params`` (flushed; the caller enqueues after commit)."""
    now = utcnow()
    job = Job(id=uuid.uuid4(), clinic_id=clinic_id, kind=kind, status=JobStatus.QUEUED,
              params=params, progress_step=0, progress_total=0, attempts=0,
              cancel_requested=False, created_at=now, enqueued_at=now)
    session.add(job)
    session.flush()
    return job


def request_cancel(session: Session, job: Job) -> bool:
    """Queued -> cancelled now; running -> cancel_requested (its worker stops).

    Compare-and-set UPDATEs on the job's current status, not on the ``job`` read before: on
    SQLite that read takes no lock, and the worker may have marked the job succeeded since (the
    UPDATE waits for that write). Returns False, changing nothing, if the job has ended;
    ``job`` is refreshed either way.
    """
    changed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), error=CANCELLED_REASON,
                cancel_requested=True)
        .returning(Job.id)
    ).scalar_one_or_none()
    if changed is None:
        changed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .returning(Job.id)
        ).scalar_one_or_none()
    session.refresh(job)
    return changed is not None


# --- the worker's writes ----------------------------------------------------------------------

def claim(session: Session, job_id: uuid.UUID, worker: str, max_attempts: int,
          heartbeat_timeout_s: float) -> int | None:
    """Atomically take the job; returns this attempt's number, or None if it is not ours to run.

    Claimable: queued, or running with a stale heartbeat and attempts left; never once a cancel
    was requested.
    """
    now = utcnow()
    stale = now - timedelta(seconds=heartbeat_timeout_s)
    return session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.QUEUED,
                and_(Job.status == JobStatus.RUNNING,
                     Job.attempts < max_attempts,
                     or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
            ),
        )
        .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now), worker=worker[:200],
                progress_step=0, loss=None, eta_seconds=None, error=None)
        .returning(Job.attempts)
    ).scalar_one_or_none()


def cancel_unstarted(job: Job) -> None:
    """A queued job whose cancel arrived before any worker took it."""
    job.status, job.finished_at, job.error = JobStatus.CANCELLED, utcnow(), CANCELLED_REASON


def heartbeat(session: Session, job_id: uuid.UUID, attempt: int,
              progress: dict[str, Any]) -> bool | None:
    """Stamp the heartbeat and store ``progress``; returns cancel_requested, None if not ours."""
    return session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt)
        .values(heartbeat_at=utcnow(), **progress)
        .returning(Job.cancel_requested)
    ).scalar_one_or_none()


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


def succeed(session: Session, job_id: uuid.UUID, attempt: int, result: dict[str, Any]) -> bool:
    """Running (our attempt, no cancel requested) -> succeeded with ``result``; False otherwise.

    The compare-and-set that decides between a result and a cancel: whichever commits first wins.
    """
    updated = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt,
               Job.cancel_requested.is_(False))
        .values(status=JobStatus.SUCCEEDED, result=result, error=None, eta_seconds=None,
                progress_step=case((Job.progress_step > Job.progress_total, Job.progress_step),
                                   else_=Job.progress_total),
                finished_at=utcnow())
        .returning(Job.id)
    ).scalar_one_or_none()
    return updated is not None


def metrics_summary(scores: list[ScanScore]) -> MetricsSummary:
    """Per-scan rows and the mean Dice / surface Dice per phase (what ``result.metrics`` holds)."""
    mean = {}
    for phase in sorted({s.phase for s in scores}):
        chosen = [s for s in scores if s.phase == phase]
        mean[phase] = PhaseMean(dice=fmean(s.dice for s in chosen),
                                sdice=fmean(s.sdice for s in chosen))
    return MetricsSummary(per_scan=scores, mean=mean)


def result_of(model_id: uuid.UUID | None, mask_ids: list[str] | list[uuid.UUID],
              scores: list[ScanScore]) -> dict[str, Any]:
    """The stored ``result`` of a succeeded job (see :class:`spottune.contract.JobResult`)."""
    return {"model_id": None if model_id is None else str(model_id),
            "mask_ids": [str(i) for i in mask_ids],
            "metrics": metrics_summary(scores).model_dump(mode="json")}


def existing_result(session: Session, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The result of artefacts already stored for ``job_id``, or None if there are none."""
    model_id = session.scalars(select(Model.id).where(Model.job_id == job_id)).first()
    masks = list(session.scalars(
        select(Mask).where(Mask.job_id == job_id).order_by(Mask.created_at, Mask.id)))
    if model_id is None and not masks:
        return None
    if model_id is None:  # segmentation: the existing model that made the masks
        model_id = masks[0].model_id
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id))
    scores = [ScanScore.model_validate(m, from_attributes=True) for m in rows]
    return result_of(model_id, [m.id for m in masks], scores)


def mark_succeeded(job: Job, result: dict[str, Any]) -> None:
    job.status = JobStatus.SUCCEEDED
    job.result = result
    job.error = None
    job.eta_seconds = None
    job.progress_step = max(job.progress_step, job.progress_total)
    job.finished_at = utcnow()


# --- the reconciler's reads and repairs -------------------------------------------------------

def overdue_queued(session: Session, enqueued_before: datetime, limit: int) -> list[Job]:
    """Queued jobs sent before ``enqueued_before`` (or never), oldest first."""
    return list(session.scalars(
        select(Job).where(Job.status == JobStatus.QUEUED,
                          (Job.enqueued_at.is_(None)) | (Job.enqueued_at < enqueued_before))
        .order_by(Job.created_at).limit(limit)))


def silent_running(session: Session, beat_before: datetime, limit: int) -> list[Job]:
    """Running jobs whose last heartbeat is older than ``beat_before``, oldest first."""
    return list(session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < beat_before)
        .order_by(Job.heartbeat_at).limit(limit)))


def update_if_unchanged(session: Session, job: Job, column: str, old: datetime | None,
                        **values: object) -> bool:
    """UPDATE the job only if ``column`` still holds ``old`` and the status is unchanged."""
    col = getattr(Job, column)
    guard = col.is_(None) if old is None else col == old
    stmt = (update(Job).where(Job.id == job.id, Job.status == job.status, guard)
            .values(**values).returning(Job.id))
    return session.execute(stmt).scalar_one_or_none() is not None
