"""What a job status poll costs the database, and lists that do not grow with their rows.

Round trips and statements are counted on the wire for Postgres (libpq's trace of every
connection the API opens: one ReadyForQuery per round trip, so a pre-ping, a BEGIN or a ROLLBACK
would show, and one Bind or Query per statement, whether SQLAlchemy or the driver's own cursor
sent it), and statements with an engine event on SQLite.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg import pq
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from spottune.app import admin
from spottune.app.main import create_app
from spottune.core.db import create_db_engine, get_engine, make_session_factory
from spottune.core.settings import Settings
from tests.app.conftest import alembic_upgrade
from tests.app.helpers import ClinicCtx, make_clinic, upload_model, upload_scan


class WireCount:
    """Statements sent through ``engine`` and, on Postgres, round trips seen by libpq."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        self._traced: list[Any] = []  # libpq connections opened since, each traced
        self._files: list[Any] = []  # their traces since the last reset

    def _trace(self, pgconn: Any) -> None:
        trace = tempfile.TemporaryFile("w+")  # noqa: SIM115 (libpq writes to it until untraced)
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        self._files.append(trace)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is not None:
            self._traced.append(pgconn)
            self._trace(pgconn)

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement)

    def __enter__(self) -> WireCount:
        self.engine.dispose()  # every connection from now on is traced
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "connect", self._on_connect)
        event.remove(self.engine, "before_cursor_execute", self._on_execute)
        self.wire()
        self.engine.dispose()

    def reset(self) -> None:
        self.wire()
        self.statements.clear()
        for pgconn in self._traced:
            self._trace(pgconn)

    def wire(self) -> tuple[int, int]:
        """Round trips (each ends with the server's ReadyForQuery) and statements (each a Bind
        or a Query from the client) since the last reset."""
        for pgconn in self._traced:
            pgconn.untrace()  # flushes the trace
        round_trips = statements = 0
        for trace in self._files:
            trace.seek(0)
            for line in trace:
                round_trips += "\tReadyForQuery" in line
                statements += line.startswith("F\t") and ("\tBind\t" in line or "\tQuery\t" in line)
            trace.close()
        self._files = []
        return round_trips, statements


def _poll_a_job(client: TestClient, clinic: ClinicCtx, weights: bytes, image: bytes) -> str:
    model = upload_model(client, clinic, weights)
    scan = upload_scan(client, clinic, image)
    r = client.post(
        "/v1/segmentations",
        headers=clinic.headers,
        json={"model_id": model["id"], "scan_ids": [scan["id"]]},
    )
    assert r.status_code == 202, r.text
    return f"/v1/jobs/{r.json()['id']}"


@contextmanager
def _counted_app(settings: Settings) -> Iterator[tuple[TestClient, WireCount]]:
    """The API as deployed (its own engine, built from the settings) with its wire counted."""
    with WireCount(get_engine(settings, pre_ping=False)) as wire, TestClient(
        create_app(settings)
    ) as client:
        yield client, wire


def _check_one_round_trip(
    client: TestClient, wire: WireCount, clinic: ClinicCtx, weights: bytes, image: bytes
) -> None:
    url = _poll_a_job(client, clinic, weights, image)
    for _ in range(8):  # psycopg prepares a statement on its 5th run: a one-off round trip
        assert client.get(url, headers=clinic.headers).status_code == 200
    wire.reset()
    polls = 5
    for _ in range(polls):
        r = client.get(url, headers=clinic.headers)
        assert r.status_code == 200 and r.json()["status"] == "queued"
    if wire.engine.dialect.name == "postgresql":  # read through psycopg's cursor, not an event
        assert wire.wire() == (polls, polls)
    else:
        assert len(wire.statements) == polls, wire.statements


def test_status_poll_is_one_round_trip_on_postgres(
    settings: Settings,
    session_factory: sessionmaker[Session],
    broker: Any,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
) -> None:
    clinic = make_clinic("polling-clinic", session_factory)
    with _counted_app(settings) as (client, wire):
        _check_one_round_trip(client, wire, clinic, weights_bytes, phantom[0])


def test_status_poll_is_one_statement_on_sqlite(
    tmp_path: Path, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    settings = Settings(data_dir=tmp_path)  # the embedded default
    alembic_upgrade(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        made = admin.create_clinic("embedded", session_factory=make_session_factory(engine))
        clinic = ClinicCtx(id=made.clinic_id, key=made.key, prefix=made.prefix)
        with _counted_app(settings) as (client, wire):
            _check_one_round_trip(client, wire, clinic, weights_bytes, phantom[0])
    finally:
        engine.dispose()


def test_status_poll_body_etag_and_refusals(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    broker: Any,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
) -> None:
    url = _poll_a_job(client, clinic_a, weights_bytes, phantom[0])
    first = client.get(url, headers=clinic_a.headers)
    assert first.status_code == 200 and first.headers["etag"].startswith('"')
    assert float(first.headers["server-timing"].split("dur=")[1]) >= 0
    listed = client.get("/v1/jobs", headers=clinic_a.headers).json()["items"]
    assert [first.json()] == listed  # the same resource as the list shows
    again = client.get(url, headers={**clinic_a.headers, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    other = client.get(url, headers=clinic_b.headers)  # another clinic's job reads as missing
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    bad = client.get(url, headers={"Authorization": f"Bearer {clinic_a.key[:-2]}xx"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.json()["error"]["message"]
    missing = client.get(url)
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]


def _statements(engine: Engine, client: TestClient, clinic: ClinicCtx, path: str) -> int:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        r = client.get(path, headers=clinic.headers)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert r.status_code == 200, r.text
    return len(seen)


@pytest.mark.parametrize("path", ["/v1/scans", "/v1/models", "/v1/jobs"])
def test_list_statements_do_not_grow_with_rows(
    path: str,
    engine: Engine,
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: Any,
) -> None:
    def add_rows(n: int) -> None:
        for _ in range(n):
            model = upload_model(client, clinic_a, weights_bytes)
            scan = upload_scan(client, clinic_a, phantom[0], phantom[1])
            r = client.post(
                "/v1/segmentations",
                headers=clinic_a.headers,
                json={"model_id": model["id"], "scan_ids": [scan["id"]]},
            )
            assert r.status_code == 202, r.text
            cancel = client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=clinic_a.headers)
            assert cancel.status_code == 200  # queued: cancelled at once (under the job limit)

    add_rows(1)
    one = _statements(engine, client, clinic_a, path)
    add_rows(4)
    five = _statements(engine, client, clinic_a, path)
    assert len(client.get(path, headers=clinic_a.headers).json()["items"]) == 5
    assert five == one, f"{path}: {one} statements for 1 row, {five} for 5"
