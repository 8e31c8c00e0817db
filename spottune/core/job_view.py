"""A job as the API shows it: shared by the API's routes and the worker's webhook deliveries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from spottune.contract import JobOut, JobResult, ProgressOut
from spottune.core.models import Job

JOB_FIELDS = (
    "id", "kind", "status", "params", "progress_step", "progress_total", "loss", "eta_seconds",
    "attempts", "cancel_requested", "error", "result", "created_at", "started_at",
    "finished_at", "heartbeat_at",
)
"""The columns of ``jobs`` that :func:`job_out` reads (a status poll selects only these)."""


def job_out(job: Job | Row[Any]) -> JobOut:
    """The job resource from an ORM row or a Core row with the columns of :data:`JOB_FIELDS`."""
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        params=job.params,
        progress=ProgressOut(
            step=job.progress_step,
            total=job.progress_total,
            loss=job.loss,
            eta_seconds=job.eta_seconds,
        ),
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        error=job.error,
        result=None if job.result is None else JobResult.model_validate(job.result),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
    )
