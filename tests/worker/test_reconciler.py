"""The reconciler thread in the worker process repairs what the broker forgot."""

from __future__ import annotations

from sqlalchemy import func, select

from spottune.core.models import JobKind, JobStatus, Mask
from tests.worker.helpers import add_clinic, add_job, add_model, add_scan, wait_job


def _segmentation(factory, **fields):  # type: ignore[no-untyped-def]
    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scan = add_scan(session, clinic, seed=8)
        return add_job(session, clinic, JobKind.SEGMENTATION,
                       {"model_id": str(model), "scan_ids": [str(scan)]}, **fields)


def test_queued_job_whose_message_was_lost_is_sent_again(factory, worker) -> None:
    job_id = _segmentation(factory, enqueued_ago_s=3600)  # no message was ever sent
    job = wait_job(factory, job_id, timeout=30)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    with factory() as session:
        assert session.scalar(select(func.count()).where(Mask.job_id == job_id)) == 1


def test_running_job_with_a_stale_heartbeat_is_run_again(factory, worker) -> None:
    stale = func.now() - func.make_interval(0, 0, 0, 0, 1)  # an hour ago
    job_id = _segmentation(factory, status=JobStatus.RUNNING, attempts=1, heartbeat_at=stale)
    job = wait_job(factory, job_id, timeout=30)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2


def test_job_is_failed_after_max_attempts(factory, worker) -> None:
    stale = func.now() - func.make_interval(0, 0, 0, 0, 1)
    job_id = _segmentation(factory, status=JobStatus.RUNNING, attempts=2, heartbeat_at=stale)
    job = wait_job(factory, job_id, timeout=30)
    assert job.status == JobStatus.FAILED
    assert job.error is not None and job.error.startswith("WorkerLost")
    assert "2 attempts" in job.error



def test_cancel_requested_on_a_dead_worker_is_settled(factory, worker) -> None:
    stale = func.now() - func.make_interval(0, 0, 0, 0, 1)
    job_id = _segmentation(factory, status=JobStatus.RUNNING, attempts=1, heartbeat_at=stale,
                           cancel_requested=True)
    job = wait_job(factory, job_id, timeout=30)
    assert job.status == JobStatus.CANCELLED and job.attempts == 1
