"""On the embedded SQLite database (one writer at a time) a cancel is answered at once while the
worker writes a large result, and the job ends one way only: cancelled with nothing of its result
left in storage, or succeeded with the cancel refused (409)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from spottune.app.main import create_app
from spottune.app.migrate import upgrade_head
from spottune.core import job_state
from spottune.core.db import create_db_engine, make_session_factory
from spottune.core.models import Job, JobKind, JobStatus, utcnow
from spottune.core.settings import Settings
from tests.app.helpers import make_clinic
from tests.test_embedded import _run, embedded  # noqa: F401  (the `spottune serve` fixture)
from tests.worker.helpers import phantom_files

CANCEL_BOUND_S = 0.5
# Wide and deep enough that the trained weights are ~260 MB: writing them takes seconds.
BIG_MODEL = {"width": 64, "depth": 4, "blocks_per_stage": 2, "spacing_mm": [1.0, 1.0],
             "patch_size": 32, "iterations": 1, "batch_size": 1}
WRITING_BYTES = 2 * 1024 * 1024  # WAL growth that says the result write has begun


def _stored(db: Path) -> tuple[int, int, int]:
    """(blobs, their bytes, chunks) in the database file, read as any reader would."""
    with sqlite3.connect(db, timeout=30) as conn:
        blobs, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs").fetchone()
        chunks = conn.execute("SELECT count(*) FROM blob_chunks").fetchone()[0]
    return int(blobs), int(size), int(chunks)


def _empty_wal(db: Path) -> None:
    with sqlite3.connect(db, timeout=30) as conn:
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:  # 1: busy, again
            time.sleep(0.05)


def test_cancel_is_answered_while_a_large_result_is_written(embedded) -> None:  # noqa: F811
    base, env = embedded
    db = Path(env["SPOTTUNE_DATA_DIR"]) / "spottune.db"
    wal = db.with_name(db.name + "-wal")
    key = _run(env, "admin", "create-clinic", "cancelling-clinic").strip()
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    image, mask = phantom_files(seed=3, site="a")
    scan = client.post("/v1/scans", files={"image": ("h.nii.gz", image),
                                           "mask": ("m.nii.gz", mask)})
    assert scan.status_code == 201, scan.text
    before = _stored(db)

    job = client.post("/v1/pretrainings", json={"train_scan_ids": [scan.json()["id"]],
                                                "options": BIG_MODEL})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    _empty_wal(db)  # from here on, only the worker's result write fills it by megabytes
    while not wal.exists() or wal.stat().st_size < WRITING_BYTES:
        state = client.get(f"/v1/jobs/{job_id}").json()
        assert state["status"] == "running", state  # the write began before the job ended
        assert time.monotonic() < deadline, "the result write never began"
        time.sleep(0.01)

    started = time.monotonic()
    cancel = client.post(f"/v1/jobs/{job_id}/cancel")
    waited = time.monotonic() - started

    while (state := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline + 60, state
        time.sleep(0.2)
    assert waited <= CANCEL_BOUND_S, f"the cancel waited {waited:.2f} s for the result write"
    if cancel.status_code == 202:  # the cancel won: nothing of the result is left anywhere
        assert state["status"] == "cancelled" and state["result"] is None, state
        assert client.get(f"/v1/jobs/{job_id}/report").status_code == 404
        assert client.get("/v1/models").json()["total"] == 0
        assert _stored(db) == before
    else:  # the result won: the cancel was refused and the job is whole
        assert cancel.status_code == 409, cancel.text
        assert cancel.json()["error"]["code"] == "job_finished", cancel.text
        assert state["status"] == "succeeded" and not state["cancel_requested"], state
        assert client.get("/v1/models").json()["total"] == 1


def test_a_cancel_that_read_the_job_running_is_refused_when_the_result_commits_first(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="filesystem://")
    upgrade_head(url=settings.database_url)
    engine = create_db_engine(settings.database_url)
    factory = make_session_factory(engine)
    clinic = make_clinic("racing", factory)
    with factory.begin() as session:
        job = Job(clinic_id=clinic.id, kind=JobKind.SEGMENTATION, params={},
                  status=JobStatus.RUNNING, attempts=1, heartbeat_at=utcnow())
        session.add(job)
    worker = factory()  # the worker's last transaction: it holds SQLite's write lock until commit
    assert job_state.succeed(worker, job.id, 1, job_state.result_of(None, [], []))
    answers: list[httpx.Response] = []
    client = TestClient(create_app(settings, factory), headers=clinic.headers)
    cancel = threading.Thread(target=lambda: answers.append(
        client.post(f"/v1/jobs/{job.id}/cancel")))
    cancel.start()
    time.sleep(0.5)  # the cancel has read the job (running: the result is not committed yet)
    worker.commit()
    worker.close()
    cancel.join(30)
    assert len(answers) == 1 and answers[0].status_code == 409, answers
    assert answers[0].json()["error"]["code"] == "job_finished"
    with factory() as session:
        ended = session.get(Job, job.id)
        assert ended.status == JobStatus.SUCCEEDED and not ended.cancel_requested
    engine.dispose()
