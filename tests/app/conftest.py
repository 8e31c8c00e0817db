"""A fresh Postgres database per test session (migrated by Alembic), a Redis broker db, clients."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.app.migrate import upgrade_head
from spottune.core.db import create_db_engine, make_session_factory
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx, make_clinic, phantom_bytes, tiny_weights
from tests.services import REDIS_PORT

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_DB = 11
MAX_UPLOAD = 2 * 1024 * 1024
TABLES = (
    "scan_dicom",
    "webhook_deliveries",
    "webhooks",
    "idempotency_keys",
    "metrics",
    "reports",
    "policies",
    "masks",
    "models",
    "scans",
    "jobs",
    "blob_chunks",
    "blobs",
    "api_keys",
    "clinics",
)


def alembic_upgrade(url: str) -> None:
    upgrade_head(url=url)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"spottune_test_{secrets.token_hex(4)}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG}/{name}"
    alembic_upgrade(url)
    yield url
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_db_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def api_settings(database_url: str, data_dir: Path, redis_db: int) -> Settings:
    """Settings of the API under test: small limits, a Redis database of the suite's own."""
    return Settings(
        database_url=database_url,
        broker_url=f"redis://127.0.0.1:{REDIS_PORT}/{redis_db}",
        data_dir=data_dir,
        max_upload_bytes=MAX_UPLOAD,
        max_voxels=64**3,
        clinic_max_concurrent_jobs=3,
        clinic_max_stored_bytes=50 * MAX_UPLOAD,
    )


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(database_url, tmp_path_factory.mktemp("data"), REDIS_DB)


@pytest.fixture()
def broker() -> Iterator[redis.Redis]:
    r = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB)
    r.delete("gpu")
    yield r
    r.delete("gpu")


@pytest.fixture(autouse=True)
def _clean_tables(engine: Engine) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))


@pytest.fixture()
def client(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings, session_factory)) as c:
        yield c


@pytest.fixture()
def clinic_a(session_factory: sessionmaker[Session]) -> ClinicCtx:
    return make_clinic("clinic-a", session_factory)


@pytest.fixture()
def clinic_b(session_factory: sessionmaker[Session]) -> ClinicCtx:
    return make_clinic("clinic-b", session_factory)


@pytest.fixture(scope="session")
def weights_bytes() -> bytes:
    return tiny_weights()


@pytest.fixture(scope="session")
def phantom() -> tuple[bytes, bytes]:
    return phantom_bytes()
