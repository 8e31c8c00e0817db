"""A job as the API shows it: shared by the API's routes and the worker's webhook deliveries."""

from __future__ import annotations

from collections.abc import Sequence
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
    return job_out_of([getattr(job, name) for name in JOB_FIELDS])


def job_out_of(values: Sequence[Any]) -> JobOut:
    """The job resource from the values of :data:`JOB_FIELDS`, in that order (a status poll
    reads them as a plain tuple from the database driver)."""
    (
        id_, kind, status, params, progress_step, progress_total, loss, eta_seconds, attempts,
        cancel_requested, error, result, created_at, started_at, finished_at, heartbeat_at,
    ) = values
    return JobOut(
        id=id_,
        kind=kind,
        status=status,
        params=params,
        progress=ProgressOut(
            step=progress_step, total=progress_total, loss=loss, eta_seconds=eta_seconds
        ),
        attempts=attempts,
        cancel_requested=cancel_requested,
        error=error,
        result=None if result is None else JobResult.model_validate(result),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        heartbeat_at=heartbeat_at,
    )
