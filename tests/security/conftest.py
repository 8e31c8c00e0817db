"""The API test fixtures (a migrated Postgres database per session, clinics, clients), with a
Redis database of its own so these tests never touch the queues of tests/app or tests/worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from spottune.core.settings import Settings
from tests.app.conftest import (  # noqa: F401  (fixtures are found by name)
    MAX_UPLOAD,
    _clean_tables,
    api_settings,
    client,
    clinic_a,
    clinic_b,
    database_url,
    engine,
    phantom,
    session_factory,
    weights_bytes,
)
from tests.services import REDIS_PORT

REDIS_DB = 13


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:  # noqa: F811
    return api_settings(database_url, tmp_path_factory.mktemp("data"), REDIS_DB)


@pytest.fixture()
def broker() -> Iterator[redis.Redis]:
    r = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB)
    r.flushdb()
    yield r
    r.flushdb()
