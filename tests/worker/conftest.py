"""Fixtures (package scope: torn down, environment restored, when tests/worker is done):
a per-run Postgres database migrated by Alembic, a Redis db, and a real Celery
worker process (prefork, queue gpu, concurrency 1) pointed at both through SPOTTUNE_ settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from tests.services import REDIS_PORT

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DB = 9  # worker tests own db 9 (app: 11, security: 13, bench: 14); flushed at start
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/{REDIS_DB}"
ROOT = Path(__file__).resolve().parents[2]

# Short timings so lifecycle repairs happen within a test's patience.
TEST_SETTINGS = {
    "SPOTTUNE_HEARTBEAT_TIMEOUT_S": "8",
    "SPOTTUNE_RECONCILE_INTERVAL_S": "1",
    "SPOTTUNE_JOB_MAX_ATTEMPTS": "2",
    "SPOTTUNE_CLINIC_MAX_CONCURRENT_JOBS": "50",
    # The worker's own webhook loop stays idle here: test_webhook_dispatch drives passes itself
    # (tests/client covers the loop inside a real worker).
    "SPOTTUNE_WEBHOOK_POLL_INTERVAL_S": "3600",
}


@pytest.fixture(scope="package")
def database_url() -> Iterator[str]:
    name = f"spottune_worker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="package")
def service_env(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """SPOTTUNE_ variables for this process (the in-process API) and the worker process."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        "SPOTTUNE_DATABASE_URL": database_url,
        "SPOTTUNE_BROKER_URL": REDIS_URL,
        "SPOTTUNE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        **TEST_SETTINGS,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    from spottune.core.settings import get_settings

    get_settings.cache_clear()
    yield env
    from spottune.core.db import get_engine

    get_engine().dispose()  # this run's database is dropped next
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture(scope="package")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real Celery worker process; yields its log file."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, **service_env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "spottune.worker.celery_app", "worker",
             "-Q", "gpu", "-c", "1", "-P", "prefork", "--loglevel", "INFO",
             "-n", f"test-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield log
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="package")
def factory(service_env: dict[str, str]) -> sessionmaker[Session]:
    from spottune.core.db import get_session_factory

    return get_session_factory()
