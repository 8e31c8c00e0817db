"""On the embedded SQLite database a deleted scan's bytes do not stay in the database file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from spottune.app.main import create_app
from spottune.app.migrate import upgrade_head
from spottune.core.db import create_db_engine, make_session_factory
from spottune.core.settings import Settings
from tests.app.helpers import make_clinic, nifti_bytes


def _file_holds(db: Path, needle: bytes) -> bool:
    with sqlite3.connect(db) as conn:  # move everything from the WAL into the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = db.with_name(db.name + "-wal")
    return needle in db.read_bytes() or (wal.exists() and needle in wal.read_bytes())


def test_deleted_scan_bytes_are_gone_from_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "spottune.db"
    settings = Settings(data_dir=tmp_path, broker_url="filesystem://")
    upgrade_head(url=settings.database_url)
    engine = create_db_engine(settings.database_url)
    factory = make_session_factory(engine)
    clinic = make_clinic("erasing", factory)
    volume = np.random.default_rng(7).random((24, 24, 24), dtype=np.float32)
    image = nifti_bytes(volume, gz=False)
    needle = volume.tobytes(order="F")[4096:4160]  # 64 bytes of its voxels, as NIfTI stores them
    with TestClient(create_app(settings, factory)) as client:
        r = client.post("/v1/scans", headers=clinic.headers, files={"image": ("s.nii", image)})
        assert r.status_code == 201, r.text
        assert _file_holds(db, needle)  # the check can see stored voxels
        assert client.delete(f"/v1/scans/{r.json()['id']}", headers=clinic.headers
                             ).status_code == 204
    engine.dispose()
    assert not _file_holds(db, needle)
