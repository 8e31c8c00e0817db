"""Job lifecycle with a real worker process: progress, cancel, failure, idempotency."""

from __future__ import annotations

import time

from sqlalchemy import func, select, update

from spottune.app.tasks import send_run_job
from spottune.core.models import Job, JobKind, JobStatus, Mask, Model
from spottune.worker import runner
from tests.worker.helpers import (
    TINY_SOURCE,
    add_clinic,
    add_job,
    add_model,
    add_scan,
    wait_job,
)


def _long_pretraining(factory):  # type: ignore[no-untyped-def]
    with factory.begin() as session:
        clinic = add_clinic(session)
        scan = add_scan(session, clinic, seed=3, site="a")
        options = {**TINY_SOURCE, "iterations": 100_000}
        return add_job(session, clinic, JobKind.PRETRAINING,
                       {"train_scan_ids": [str(scan)], "options": options})


def test_progress_advances_then_cancel_stops_without_results(factory, worker) -> None:
    job_id = _long_pretraining(factory)
    assert send_run_job(job_id)
    wait_job(factory, job_id, until=(JobStatus.RUNNING,), timeout=30)
    steps = []
    for _ in range(3):
        time.sleep(1.5)
        with factory() as session:
            job = session.get(Job, job_id)
            steps.append(job.progress_step)
    assert steps[0] < steps[1] < steps[2]
    assert job.progress_total == 100_000 and job.loss is not None and job.eta_seconds is not None
    assert job.heartbeat_at is not None

    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    started = time.monotonic()
    job = wait_job(factory, job_id, timeout=10)
    assert job.status == JobStatus.CANCELLED
    assert time.monotonic() - started < 10
    assert job.result is None and job.finished_at is not None
    with factory() as session:
        assert session.scalar(select(func.count()).where(Model.job_id == job_id)) == 0


def test_failing_job_is_failed_with_a_reason_and_the_worker_goes_on(factory, worker) -> None:
    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scan = add_scan(session, clinic, seed=4)
        bad = add_job(session, clinic, JobKind.SEGMENTATION,
                      {"model_id": str(model), "scan_ids": [str(scan), "0" * 32]})
        good = add_job(session, clinic, JobKind.SEGMENTATION,
                       {"model_id": str(model), "scan_ids": [str(scan)]})
    assert send_run_job(bad) and send_run_job(good)
    failed = wait_job(factory, bad)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.startswith("InputError: scan ")
    assert "Traceback" not in failed.error and failed.result is None
    with factory() as session:  # no partial results: the first scan's mask was not kept
        assert session.scalar(select(func.count()).where(Mask.job_id == bad)) == 0
    assert wait_job(factory, good).status == JobStatus.SUCCEEDED


def test_running_a_job_twice_stores_its_results_once(factory, service_env) -> None:
    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scans = [add_scan(session, clinic, seed=5), add_scan(session, clinic, seed=6)]
        # enqueued "now" and run here at once: the worker's reconciler has no reason to touch it
        job_id = add_job(session, clinic, JobKind.SEGMENTATION,
                         {"model_id": str(model), "scan_ids": [str(s) for s in scans]})
    assert runner.run_job(str(job_id)) == "succeeded"
    assert runner.run_job(str(job_id)) == "already succeeded"
    # A redelivered message for a job whose results exist (e.g. the ack was lost).
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
    assert runner.run_job(str(job_id)) == "results already stored"
    with factory() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED and len(job.result["mask_ids"]) == 2
        counts = session.execute(select(Mask.scan_id, func.count()).where(Mask.job_id == job_id)
                                 .group_by(Mask.scan_id)).all()
    assert sorted(counts) == sorted((s, 1) for s in scans)


def test_a_job_claimed_elsewhere_is_not_run(factory, service_env) -> None:
    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scan = add_scan(session, clinic, seed=7)
        job_id = add_job(session, clinic, JobKind.SEGMENTATION,
                         {"model_id": str(model), "scan_ids": [str(scan)]},
                         status=JobStatus.RUNNING, attempts=1, heartbeat_at=func.now())
    assert runner.run_job(str(job_id)).startswith("not claimable")
    with factory() as session:
        assert session.get(Job, job_id).attempts == 1
