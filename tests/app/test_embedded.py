"""The embedded default: SQLite + the filesystem broker, no configuration at all."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from spottune.app.main import create_app
from spottune.core.db import create_db_engine, make_session_factory
from spottune.core.settings import Settings
from tests.app.conftest import alembic_upgrade
from tests.app.helpers import make_clinic, upload_model, upload_scan


def test_sqlite_and_filesystem_broker(
    tmp_path: Path, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.is_sqlite and settings.broker_url == "filesystem://"
    alembic_upgrade(settings.database_url)
    engine = create_db_engine(settings.database_url)
    factory = make_session_factory(engine)
    try:
        clinic = make_clinic("embedded", factory)
        with TestClient(create_app(settings, factory)) as client:
            assert client.get("/readyz").status_code == 200
            model = upload_model(client, clinic, weights_bytes)
            scan = upload_scan(client, clinic, phantom[0], phantom[1])
            r = client.post(
                "/v1/adaptations",
                headers=clinic.headers,
                json={"model_id": model["id"], "train_scan_ids": [scan["id"]]},
            )
            assert r.status_code == 202, r.text
            job = client.get(r.headers["location"], headers=clinic.headers).json()
            assert job["created_at"].endswith(("+00:00", "Z"))
            r = client.get(f"/v1/models/{model['id']}/weights", headers=clinic.headers)
            assert r.content == weights_bytes
        queued = list((tmp_path / "broker" / "out").iterdir())
        assert len(queued) == 1 and job["id"] in queued[0].read_text()
    finally:
        engine.dispose()


def test_production_refuses_embedded_defaults(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="SQLite"):
        Settings(environment="production", data_dir=tmp_path, broker_url="redis://x")
    with pytest.raises(ValueError, match="filesystem"):
        Settings(environment="production", database_url="postgresql://u:p@db/x")
    with pytest.raises(ValueError, match="password"):
        Settings(
            environment="production",
            database_url="postgresql://u:changethis@db/x",
            broker_url="redis://x",
        )
    ok = Settings(
        environment="production", database_url="postgresql://u:s3cret@db/x", broker_url="redis://r"
    )
    assert ok.database_url.startswith("postgresql+psycopg://")
