"""A job as the API shows it: shared by the API's routes and the worker's webhook deliveries."""

from __future__ import annotations

from spottune.contract import JobOut, JobResult, ProgressOut
from spottune.core.models import Job


def job_out(job: Job) -> JobOut:
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
