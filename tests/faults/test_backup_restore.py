"""Backup and restore drill: `pg_dump` of a stack with finished jobs, restored into a fresh
database; served from the restored database, every artefact downloads with the same sha256."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.faults.helpers import (
    adaptation,
    segmentation,
    upload_model,
    upload_scans,
    wait_job,
)
from tests.faults.services import (
    PG_BIN,
    PrivatePostgres,
    Service,
    api_service,
    free_port,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def _artefacts(http: httpx.Client) -> dict[str, str]:
    """sha256 of every download the clinic can make: scans, masks, models, job outputs."""
    paths = []
    for scan in http.get("/v1/scans", params={"limit": 200}).json()["items"]:
        paths.append(f"/v1/scans/{scan['id']}/image")
        if scan["has_mask"]:
            paths.append(f"/v1/scans/{scan['id']}/mask")
    for model in http.get("/v1/models", params={"limit": 200}).json()["items"]:
        paths.append(f"/v1/models/{model['id']}/weights")
    for job in http.get("/v1/jobs", params={"limit": 200}).json()["items"]:
        assert job["status"] == "succeeded", job
        for mask in http.get(f"/v1/jobs/{job['id']}/masks").json()["items"]:
            paths.append(f"/v1/masks/{mask['id']}")
        if job["kind"] == "adaptation":
            paths += [f"/v1/jobs/{job['id']}/report", f"/v1/jobs/{job['id']}/report.png",
                      f"/v1/jobs/{job['id']}/policy"]
    found = {}
    for path in paths:
        r = http.get(path)
        assert r.status_code == 200, (path, r.text)
        found[path] = hashlib.sha256(r.content).hexdigest()
        if "etag" in r.headers:  # the checksum it carries (JSON: a prefix) agrees with the body
            assert found[path].startswith(r.headers["etag"].strip('W/"')), path
    return found


def test_pg_dump_restored_into_a_fresh_database_serves_identical_artefacts(
    http: httpx.Client,
    clinic: str,
    worker: Service,
    postgres: PrivatePostgres,
    env: dict[str, str],
    factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    model = upload_model(http)
    scans = upload_scans(http, 3)
    start_worker(worker)
    adapted = adaptation(http, model, scans[:2], scans[2:], iterations=20)
    segmented = segmentation(http, model, scans)
    for job in (adapted, segmented):
        assert wait_job(factory, job, timeout=120)["status"] == "succeeded"
    worker.stop()
    before = _artefacts(http)
    assert len(before) >= 12, before

    dump = tmp_path / "spottune.dump"
    target = f"restored_{tmp_path.name[-8:]}".replace("-", "_").lower()
    pg = ["-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres"]
    subprocess.run([str(PG_BIN / "pg_dump"), *pg, "-Fc", "-f", str(dump), "spottune_faults"],
                   check=True, capture_output=True, timeout=120)
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    try:
        subprocess.run([str(PG_BIN / "pg_restore"), *pg, "--no-owner", "-d", target,
                        str(dump)], check=True, capture_output=True, timeout=120)
        port = free_port()
        restored_env = {**env, "SPOTTUNE_DATABASE_URL": postgres.url(target)}
        restored = api_service(restored_env, tmp_path / "restored-api.log", port)
        start_api(restored, f"http://127.0.0.1:{port}")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"Authorization": f"Bearer {clinic}"}) as again:
                assert _artefacts(again) == before
        finally:
            restored.kill()
    finally:
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
