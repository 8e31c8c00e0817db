"""Fault-injection fixtures: private Postgres and Redis, the API and workers as real processes.

Timings are short (heartbeat 5 s, reconciler every 1 s) so repairs happen within a test, and
every model is tiny, so the whole suite stays within a few minutes on two CPU cores.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from spottune.app import admin
from spottune.app.migrate import upgrade_head
from spottune.core.db import create_db_engine, make_session_factory
from tests.faults.services import (
    PG_BIN,
    PrivatePostgres,
    PrivateRedis,
    Service,
    api_service,
    free_port,
    start_api,
    worker_service,
)

HEARTBEAT_TIMEOUT_S = 5
FAULT_SETTINGS = {
    "SPOTTUNE_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
    "SPOTTUNE_RECONCILE_INTERVAL_S": "1",
    "SPOTTUNE_JOB_MAX_ATTEMPTS": "3",
    "SPOTTUNE_CLINIC_MAX_CONCURRENT_JOBS": "50",
    "SPOTTUNE_BROKER_SEND_TIMEOUT_S": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
TABLES = "metrics, reports, policies, masks, models, scans, jobs, blob_chunks, blobs"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"Postgres server binaries not found in {PG_BIN} (set SPOTTUNE_PG_BIN)")
    server = PrivatePostgres()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found on PATH")
    server = PrivateRedis()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def database_url(postgres: PrivatePostgres) -> str:
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "spottune_faults"')
    url = postgres.url("spottune_faults")
    upgrade_head(url=url)
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_db_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(autouse=True)
def _clean(engine: Engine) -> Iterator[None]:
    yield
    engine.dispose()  # connections may have died with a Postgres restart
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture(scope="session")
def env(
    database_url: str, redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of every spawned service process."""
    return {
        **os.environ,
        "SPOTTUNE_DATABASE_URL": database_url,
        "SPOTTUNE_BROKER_URL": redis_server.url,
        "SPOTTUNE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        **FAULT_SETTINGS,
    }


@pytest.fixture()
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    """A worker service, not started (tests start, kill and restart it)."""
    service = worker_service(env, tmp_path / "worker.log")
    yield service
    service.kill()


@pytest.fixture()
def api(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Service, str]]:
    """A running uvicorn API process and its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service = api_service({**env, "TMPDIR": str(tmp_path)}, tmp_path / "api.log", port)
    start_api(service, base)
    yield service, base
    service.kill()


@pytest.fixture()
def clinic(factory: sessionmaker[Session]) -> str:
    """A fresh clinic's API key."""
    return admin.create_clinic(f"clinic-{uuid.uuid4().hex[:8]}", session_factory=factory).key


@pytest.fixture()
def http(api: tuple[Service, str], clinic: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api[1], headers={"Authorization": f"Bearer {clinic}"}, timeout=30
    ) as client:
        yield client
