"""The reconciler thread in the worker process repairs what the broker forgot."""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import func, select, update

from spottune.core.blobs import stage_blob
from spottune.core.models import CHUNK_BYTES, Blob, BlobChunk, Job, JobKind, JobStatus, Mask, utcnow
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


def test_result_blobs_a_dead_worker_left_staged_are_dropped_once_the_job_ended(
        factory, worker) -> None:
    stale = func.now() - func.make_interval(0, 0, 0, 0, 1)
    dead = _segmentation(factory, status=JobStatus.RUNNING, attempts=2, heartbeat_at=stale)
    alive = _segmentation(factory, status=JobStatus.RUNNING, attempts=1, heartbeat_at=utcnow())
    staged = {}
    for job_id in (dead, alive):  # what a worker stopped in the middle of a result write leaves
        with factory() as session:
            clinic_id = session.get(Job, job_id).clinic_id
        staged[job_id] = uuid.uuid4()
        stage_blob(factory, staged[job_id], clinic_id, job_id, os.urandom(3 * CHUNK_BYTES // 2),
                   "application/gzip")

    def left(job_id: uuid.UUID) -> int:
        with factory() as session:
            blob = staged[job_id]
            return int(session.scalar(select(func.count()).where(Blob.id == blob)) or 0) + int(
                session.scalar(select(func.count()).where(BlobChunk.blob_id == blob)) or 0)

    assert wait_job(factory, dead, timeout=30).status == JobStatus.FAILED
    deadline = time.monotonic() + 20
    while left(dead):
        assert time.monotonic() < deadline, "the failed job's staged blob is still stored"
        time.sleep(0.2)
    assert left(alive) == 3  # a running job's staged blob stays: its worker may still use it
    with factory.begin() as session:  # its worker stopped it (as after a cancel) and died
        session.execute(update(Job).where(Job.id == alive).values(status=JobStatus.CANCELLED))
    while left(alive):
        assert time.monotonic() < deadline, "the cancelled job's staged blob is still stored"
        time.sleep(0.2)
