"""Alembic: upgrade from empty on Postgres and SQLite; the models match the migrations."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from spottune.core.db import Base, create_db_engine
from tests.app.conftest import alembic_upgrade

EXPECTED = {
    "clinics",
    "api_keys",
    "blobs",
    "blob_chunks",
    "models",
    "scans",
    "jobs",
    "masks",
    "policies",
    "reports",
    "metrics",
    "scan_dicom",
    "idempotency_keys",
    "webhooks",
    "webhook_deliveries",
    "alembic_version",
}


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_postgres_schema_matches_models(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) == EXPECTED
    assert _diff(engine) == []


def test_sqlite_upgrade_from_empty(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'spottune.db'}"
    alembic_upgrade(url)
    engine = create_db_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == EXPECTED
        assert _diff(engine) == []
    finally:
        engine.dispose()
