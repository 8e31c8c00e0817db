"""Three workers on Postgres and Redis run 30 jobs while one is SIGKILLed mid-job and Redis comes
back empty: every job succeeds exactly once, and its results equal a single worker's."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from spottune.core.blobs import read_blob
from tests.faults.helpers import (
    broken_invariants,
    job_row,
    outputs,
    segmentation,
    upload_model,
    upload_scans,
    wait_job,
)
from tests.faults.services import PrivateRedis, Service, start_worker, worker_service

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]
JOBS = 30
ADAPTATIONS = (0, 1, 10, 20)  # positions of the (longer) adaptation jobs among the 30


def _submit(http: httpx.Client, model: str, scans: list[str]) -> list[str]:
    jobs = []
    for i in range(JOBS):
        if i in ADAPTATIONS:
            r = http.post("/v1/adaptations", json={
                "model_id": model, "train_scan_ids": scans[:2], "target_scan_ids": scans[2:4],
                "method": "finetune-all",
                "options": {"iterations": 60, "batch_size": 4, "seed": i}})
            assert r.status_code == 202, r.text
            jobs.append(str(r.json()["id"]))
        else:
            jobs.append(segmentation(http, model, [scans[i % len(scans)]]))
    return jobs


def _fingerprint(factory: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    """What the job produced, independent of ids and timestamps: per scan the mask's voxels
    (gzip's header holds a time), and the trained weights."""
    with factory() as session:
        masks = session.execute(text("SELECT scan_id, blob_id FROM masks WHERE job_id = :id"),
                                {"id": job_id}).all()
        weights = session.execute(text(
            "SELECT b.sha256 FROM models m JOIN blobs b ON b.id = m.weights_blob_id "
            "WHERE m.job_id = :id"), {"id": job_id}).scalars().all()
        return {
            "masks": {str(scan): hashlib.sha256(gzip.decompress(read_blob(session, blob)))
                      .hexdigest() for scan, blob in masks},
            "weights": list(weights),
        }


def _wait_all(factory: sessionmaker[Session], jobs: list[str]) -> None:
    for job in jobs:
        done = wait_job(factory, job, timeout=240)
        assert done["status"] == "succeeded", (job, done["error"])


def _worker_name(service: Service) -> str:
    return service.argv[service.argv.index("-n") + 1].replace("%h", os.uname().nodename)


def test_three_workers_a_kill_and_an_empty_redis_run_each_job_once(
    http: httpx.Client,
    env: dict[str, str],
    redis_server: PrivateRedis,
    factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 6)
    workers = [worker_service(env, tmp_path / f"worker{i}.log") for i in range(3)]
    try:
        for worker in workers:
            start_worker(worker)
        jobs = _submit(http, model, scans)
        # a worker dies in the middle of an adaptation, then the broker loses every message
        victim_job = jobs[ADAPTATIONS[0]]
        wait_job(factory, victim_job, until=("running",), min_step=5, timeout=90)
        with factory() as session:
            name = str(session.scalar(text("SELECT worker FROM jobs WHERE id = :id"),
                                      {"id": victim_job}))
        victim = next(w for w in workers if _worker_name(w) == name)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.proc.wait()  # type: ignore[union-attr]
        queued = sum(str(job_row(factory, j)["status"]).lower() == "queued" for j in jobs)
        redis_server.restart_empty()
        assert queued, "every job had started before the broker was wiped: nothing tested"
        _wait_all(factory, jobs)
        rows = {j: job_row(factory, j) for j in jobs}
        assert rows[victim_job]["attempts"] == 2, rows[victim_job]
        assert all(r["attempts"] >= 1 for r in rows.values())
        for i, job in enumerate(jobs):  # exactly once: one model per adaptation, one mask a scan
            done = outputs(factory, job)
            expected = scans[2:4] if i in ADAPTATIONS else [scans[i % len(scans)]]
            assert done["masks"] == dict.fromkeys(expected, 1), (i, done)
            assert len(done["models"]) == (1 if i in ADAPTATIONS else 0), (i, done)
            assert sorted(rows[job]["result"]["mask_ids"]) == sorted(
                str(m) for m in _mask_ids(factory, job))
        assert broken_invariants(factory) == {}
        multi = [_fingerprint(factory, j) for j in jobs]
    finally:
        for worker in workers:
            worker.kill()

    # the same 30 requests on one worker, undisturbed
    single = worker_service(env, tmp_path / "single.log")
    try:
        start_worker(single)
        again = _submit(http, model, scans)
        _wait_all(factory, again)
        assert all(job_row(factory, j)["attempts"] == 1 for j in again)
        assert [_fingerprint(factory, j) for j in again] == multi
    finally:
        single.kill()
    assert len({str(m["weights"]) for m, i in zip(multi, range(JOBS), strict=True)
                if i in ADAPTATIONS}) == len(ADAPTATIONS)  # seeds differ: so do the models


def _mask_ids(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as session:
        return [str(m) for m in session.execute(
            text("SELECT id FROM masks WHERE job_id = :id"), {"id": job_id}).scalars()]
