"""Fair share with a real worker: a clinic with 100 queued jobs does not hold up another's."""

from __future__ import annotations

import time

import redis
from sqlalchemy import select, update

from spottune.app.tasks import send_run_job
from spottune.core.models import Job, JobKind, JobStatus
from tests.worker.conftest import REDIS_URL
from tests.worker.helpers import TINY_SOURCE, add_clinic, add_job, add_model, add_scan, wait_job


def test_new_clinic_waits_for_at_most_the_running_job(factory, worker) -> None:
    with factory.begin() as session:
        busy = add_clinic(session)
        scan = add_scan(session, busy, seed=3, site="a")
        model = add_model(session, busy)
        running = add_job(session, busy, JobKind.PRETRAINING, {
            "train_scan_ids": [str(scan)], "options": {**TINY_SOURCE, "iterations": 100_000}})
    assert send_run_job(running)
    wait_job(factory, running, until=(JobStatus.RUNNING,), timeout=30)
    segment = {"model_id": str(model), "scan_ids": [str(scan)]}
    with factory.begin() as session:
        backlog = [add_job(session, busy, JobKind.SEGMENTATION, segment) for _ in range(100)]
        other = add_clinic(session)
        other_model = add_model(session, other)
        other_scan = add_scan(session, other, seed=4)
        newcomer = add_job(session, other, JobKind.SEGMENTATION,
                           {"model_id": str(other_model), "scan_ids": [str(other_scan)]})
    for job_id in (*backlog, newcomer):  # the broker holds 100 messages before the newcomer's
        assert send_run_job(job_id)
    try:
        with factory.begin() as session:  # the running job ends (here: cancelled)
            session.execute(update(Job).where(Job.id == running).values(cancel_requested=True))
        done = wait_job(factory, newcomer, timeout=60)
        assert done.status == JobStatus.SUCCEEDED, done.error
        with factory() as session:
            ahead = session.scalars(select(Job.id).where(
                Job.id.in_(backlog), Job.started_at < done.started_at)).all()
        assert ahead == [], f"{len(ahead)} of the busy clinic's queued jobs started first"
    finally:
        with factory.begin() as session:  # the backlog is not this test's business any more
            session.execute(update(Job).where(Job.id.in_(backlog), Job.status == JobStatus.QUEUED)
                            .values(status=JobStatus.CANCELLED, cancel_requested=True))
    wait_job(factory, running, timeout=30)
    # Spare messages would run whatever the next test queues: let the worker drain them.
    broker = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 60
    while broker.llen("gpu") or broker.hlen("unacked"):
        assert time.monotonic() < deadline, "the worker did not drain the backlog's messages"
        time.sleep(0.2)


def test_a_message_is_a_turn_only_for_jobs_of_its_queue(factory, service_env) -> None:
    from spottune.core import fairshare
    from spottune.core.broker import Queue

    with factory.begin() as session:
        clinic = add_clinic(session)
        model = add_model(session, clinic)
        scan = add_scan(session, clinic, seed=5)
        params = {"model_id": str(model), "scan_ids": [str(scan)]}
        on_gpu = add_job(session, clinic, JobKind.SEGMENTATION, params, enqueued_ago_s=-600)
        on_cpu = add_job(session, clinic, JobKind.SEGMENTATION, {**params, "device": "cpu"},
                         enqueued_ago_s=-600)
    try:
        with factory() as session:
            assert fairshare.next_job(session, queue=Queue.CPU) == on_cpu
            assert fairshare.next_job(session, queue=Queue.GPU) == on_gpu
            assert fairshare.next_job(session, exclude=[on_cpu], queue=Queue.CPU) is None
    finally:
        with factory.begin() as session:  # no worker should run these
            session.execute(update(Job).where(Job.id.in_([on_gpu, on_cpu]))
                            .values(status=JobStatus.CANCELLED))
