"""Faults with real processes: killed workers, a wiped broker, a Postgres restart, a killed API.

Each test starts its own processes on a private Postgres and Redis (see conftest.py) and checks
what a clinic would see: every job finishes exactly once, outages answer 503 with a clear
body, and nothing half-written is left in storage.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.faults.helpers import (
    adaptation,
    broken_invariants,
    corrupt_scan,
    job_row,
    outputs,
    segmentation,
    table_counts,
    upload_model,
    upload_scans,
    wait_job,
)
from tests.faults.services import (
    PrivatePostgres,
    PrivateRedis,
    Service,
    start_api,
    start_worker,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def _assert_once(
    factory: sessionmaker[Session], job_id: str, scans: list[str], adapted: bool
) -> None:
    """One adapted model (if any), exactly one mask per target scan, consistent storage."""
    done = outputs(factory, job_id)
    assert len(done["models"]) == (1 if adapted else 0), done
    assert done["masks"] == dict.fromkeys(scans, 1), done
    result = job_row(factory, job_id)["result"]
    if adapted:
        assert result["model_id"] == done["models"][0]
    assert len(set(result["mask_ids"])) == len(scans)
    assert broken_invariants(factory) == {}


def test_worker_killed_mid_adaptation_finishes_exactly_once(
    http: httpx.Client, worker: Service, factory: sessionmaker[Session]
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 3)
    start_worker(worker)
    job = adaptation(http, model, scans[:2], scans[2:], iterations=400)
    wait_job(factory, job, until=("running",), min_step=10, timeout=60)
    worker.kill()  # SIGKILL, pool children included: no goodbye, the message stays unacked
    killed_at = job_row(factory, job)
    assert str(killed_at["status"]).lower() == "running" and killed_at["attempts"] == 1
    start_worker(worker)  # a fresh worker; its reconciler sees the stopped heartbeat
    done = wait_job(factory, job, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    _assert_once(factory, job, scans[2:], adapted=True)


def test_redis_restarted_empty_every_job_still_finishes(
    http: httpx.Client,
    worker: Service,
    redis_server: PrivateRedis,
    factory: sessionmaker[Session],
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 3)
    start_worker(worker)
    running = adaptation(http, model, scans[:2], scans[2:], iterations=150)
    queued = [segmentation(http, model, [s]) for s in scans]
    wait_job(factory, running, until=("running",), timeout=60)
    redis_server.restart_empty()  # the queued messages (and the unacked one) are gone
    still_queued = [j for j in queued if str(job_row(factory, j)["status"]).lower() == "queued"]
    assert still_queued, "every job had started before the broker was wiped: nothing tested"
    for job in (running, *queued):
        done = wait_job(factory, job, timeout=120)
        assert done["status"] == "succeeded", (job, done["error"])
    _assert_once(factory, running, scans[2:], adapted=True)
    for job, scan in zip(queued, scans, strict=True):
        _assert_once(factory, job, [scan], adapted=False)
    assert worker.alive()


def test_postgres_restart_503_then_recovery_without_restarts(
    api: tuple[Service, str],
    http: httpx.Client,
    worker: Service,
    postgres: PrivatePostgres,
    factory: sessionmaker[Session],
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 3)
    start_worker(worker)
    pids = (api[0].pid, worker.pid)
    job = adaptation(http, model, scans[:2], scans[2:], iterations=300)
    wait_job(factory, job, until=("running",), min_step=5, timeout=60)
    postgres.stop("immediate")  # mid-training: the worker's heartbeats now fail
    try:
        for method, path in (
            ("GET", f"/v1/jobs/{job}"),
            ("GET", "/v1/scans"),
            ("POST", "/v1/segmentations"),
            ("GET", f"/v1/scans/{scans[0]}/image"),
        ):
            r = http.request(method, path, json={"model_id": model, "scan_ids": scans[:1]})
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "database_unavailable", r.text
            assert "Traceback" not in r.text and r.headers.get("retry-after")
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"
        time.sleep(2)
    finally:
        postgres.start()
    wait_until(lambda: http.get(f"/v1/jobs/{job}").status_code == 200, "API did not recover", 15)
    assert http.get("/readyz").status_code == 200
    done = wait_job(factory, job, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert (api[0].pid, worker.pid) == pids and api[0].alive() and worker.alive()
    _assert_once(factory, job, scans[2:], adapted=True)
    assert "Traceback" not in "".join(
        line for line in api[0].log_text().splitlines() if "ERROR" in line
    )


def _slow_upload(base: str, key: str, total: int) -> socket.socket:
    """Open a multipart upload, send its headers and part of the body, and keep it open."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    boundary = "faultboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="slow.nii"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    sock.sendall(
        (
            f"POST /v1/scans HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + total}\r\n\r\n"
        ).encode()
        + head
    )
    for _ in range(5):
        sock.sendall(b"\0" * 64 * 1024)
        time.sleep(0.05)
    return sock


def test_api_killed_during_upload_leaves_nothing(
    api: tuple[Service, str],
    http: httpx.Client,
    clinic: str,
    factory: sessionmaker[Session],
) -> None:
    upload_scans(http, 1)
    before = table_counts(factory)
    sock = _slow_upload(api[1], clinic, total=1024 * 1024)
    time.sleep(0.5)
    api[0].kill()
    sock.close()
    assert table_counts(factory) == before
    start_api(api[0], api[1])  # the same port again
    assert http.get("/v1/scans").json()["total"] == 1
    # and killed at random points of complete uploads: either all of a scan is there or nothing
    for delay in (0.0, 0.05, 0.1, 0.2):
        with (
            httpx.Client(base_url=api[1], headers=http.headers, timeout=5) as c,
            contextlib.suppress(httpx.HTTPError),
        ):
            c.post(
                "/v1/scans",
                files={"image": ("x.nii.gz", _phantom())},
                extensions={"timeout": {"read": delay or 0.001}},
            )
        api[0].kill()
        assert broken_invariants(factory) == {}
        start_api(api[0], api[1])
    assert broken_invariants(factory) == {}


def _phantom() -> bytes:
    from spottune.ml.synthetic import make_phantom
    from tests.faults.helpers import SHAPE, nifti_gz

    return nifti_gz(make_phantom(SHAPE, seed=int(uuid.uuid4().int % 100), site="b")[0])


def test_failing_job_is_failed_readably_and_the_worker_goes_on(
    http: httpx.Client, worker: Service, factory: sessionmaker[Session]
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 3)
    corrupt_scan(factory, scans[2])  # storage damaged after a valid upload
    start_worker(worker)
    pid = worker.pid
    bad = adaptation(http, model, scans[:2], scans[1:], iterations=20)
    good = segmentation(http, model, scans[:2])
    failed = wait_job(factory, bad, until=("failed",), timeout=90)
    error = failed["error"]
    assert error and "Traceback" not in error and len(error) < 2100
    assert error.split(":", 1)[0].endswith("Error") and "cannot be read" in error, error
    assert outputs(factory, bad) == {
        "models": [],
        "masks": {},
        "policies": 0,
        "reports": 0,
        "metrics": 0,
    }
    assert wait_job(factory, good, timeout=90)["status"] == "succeeded"
    assert worker.alive() and worker.pid == pid
    assert broken_invariants(factory) == {}
