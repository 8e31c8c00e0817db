"""The storage quota holds under concurrent uploads, on SQLite (the embedded default) and on
Postgres: uploads racing for the last bytes of a clinic's quota never overshoot it together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.app.migrate import upgrade_head
from spottune.core.db import create_db_engine, make_session_factory
from spottune.core.models import Blob
from spottune.core.settings import Settings
from tests.app.helpers import make_clinic, nifti_bytes

UPLOADS = 8
FIT = 2  # uploads the quota has room for


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[tuple[str, sessionmaker[Session]]]:
    url = f"sqlite:///{tmp_path / 'quota.db'}" if request.param == "sqlite" else database_url
    if request.param == "sqlite":
        upgrade_head(url=url)
    engine = create_db_engine(url)
    yield url, make_session_factory(engine)
    engine.dispose()


def test_concurrent_uploads_never_exceed_the_quota(
    backend: tuple[str, sessionmaker[Session]], settings: Settings, tmp_path: Path
) -> None:
    url, factory = backend
    rng = np.random.default_rng(0)
    images = [nifti_bytes(rng.random((40, 40, 40), dtype=np.float32), gz=False)
              for _ in range(UPLOADS)]
    size = len(images[0])
    quota = int(size * (FIT + 0.5))
    limited = settings.model_copy(update={
        "database_url": url, "broker_url": "filesystem://", "data_dir": tmp_path,
        "clinic_max_stored_bytes": quota, "max_upload_bytes": 2 * size})
    clinic = make_clinic("racing", factory)
    app = create_app(limited, factory)
    start = threading.Barrier(UPLOADS)
    answers: list[int] = []

    def upload(image: bytes) -> None:
        client = TestClient(app)  # not entered: each request runs on its own event loop
        start.wait()
        r = client.post("/v1/scans", headers=clinic.headers,
                        files={"image": ("scan.nii", image)})
        assert r.status_code in (201, 413), r.text
        if r.status_code == 413:
            assert r.json()["error"]["code"] == "storage_quota_exceeded", r.text
        answers.append(r.status_code)

    threads = [threading.Thread(target=upload, args=(image,)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == UPLOADS, "an upload failed with something else than 201 or 413"
    with factory() as session:
        stored = session.scalar(select(func.coalesce(func.sum(Blob.size), 0))
                                .where(Blob.clinic_id == clinic.id))
    assert answers.count(201) == FIT and stored <= quota, (answers, stored, quota)
