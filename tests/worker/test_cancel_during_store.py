"""A cancel never waits behind a worker writing a job's results: it is answered at once, and
the results being written are rolled back."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from spottune.core.models import Job, JobKind, JobStatus, Mask, Model, utcnow
from spottune.ml.loop import Cancelled
from spottune.worker import results
from tests.worker.helpers import add_model, add_scan, phantom_files


def _waiting_on_a_lock(factory) -> bool:  # type: ignore[no-untyped-def]
    with factory() as session:  # a fresh transaction: pg_stat_activity is cached per transaction
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()")))


def test_cancel_is_answered_while_results_are_being_written(factory, service_env) -> None:
    from spottune.app.admin import create_clinic
    from spottune.app.main import create_app

    created = create_clinic(f"cancel-{uuid.uuid4().hex[:8]}")
    with factory.begin() as session:
        model = add_model(session, created.clinic_id)
        scan = add_scan(session, created.clinic_id, seed=9)
        job = Job(clinic_id=created.clinic_id, kind=JobKind.SEGMENTATION,
                  params={"model_id": str(model), "scan_ids": [str(scan)]},
                  status=JobStatus.RUNNING, attempts=1, heartbeat_at=utcnow(),
                  enqueued_at=utcnow(), started_at=utcnow())
        session.add(job)
    output = results.JobOutput(masks_model_id=model, masks={scan: phantom_files(9, "b")[1]})

    # Hold the clinic's quota lock (as a concurrent upload does): the worker's first blob write
    # waits on it, so the result write is caught in the middle, deterministically.
    holder = factory()
    holder.execute(text("SELECT id FROM clinics WHERE id = :id FOR UPDATE"),
                   {"id": created.clinic_id})
    outcome: list[BaseException | str] = []

    def write() -> None:
        try:
            outcome.append(results.store(factory, job.id, 1, output))
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while not _waiting_on_a_lock(factory):
            assert time.monotonic() < deadline and writer.is_alive(), outcome
            time.sleep(0.05)
        answers: list[int] = []
        with TestClient(create_app(),
                        headers={"Authorization": f"Bearer {created.key}"}) as client:
            cancel = threading.Thread(target=lambda: answers.append(
                client.post(f"/v1/jobs/{job.id}/cancel").status_code))
            cancel.start()
            cancel.join(5)
            blocked = cancel.is_alive()
            holder.rollback()  # let the writer go on (and a blocked cancel finish)
            cancel.join(30)
    finally:
        holder.rollback()
        holder.close()
        writer.join(30)
    assert not blocked, "the cancel waited for the result write"
    assert answers == [202]
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    with factory() as session:
        assert session.scalar(select(func.count()).where(Mask.job_id == job.id)) == 0
        assert session.scalar(select(func.count()).where(Model.job_id == job.id)) == 0
        assert session.get(Job, job.id).cancel_requested is True
    with pytest.raises(Cancelled):  # and later on too
        results.store(factory, job.id, 1, output)
