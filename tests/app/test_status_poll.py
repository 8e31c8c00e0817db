"""The job status poll's fast path (spottune.app.status_poll) answers as the route and the
middleware stack do: the same status, body and headers, Server-Timing, the shared rate limit,
503 while the database is down, and reads that survive connections the database dropped.

Each answer of the app is compared with the same request's answer from an app whose fast path is
off (every poll through the middleware stack and FastAPI's route), on the real Postgres.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.app.status_poll import StatusPoll
from spottune.contract import JobKind, JobStatus
from spottune.core.models import Job
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx

TIMING = re.compile(r"^app;dur=\d+\.\d\d$")


@contextmanager
def _clients(
    settings: Settings, factory: sessionmaker[Session] | None = None
) -> Iterator[tuple[TestClient, TestClient]]:
    """(the app as deployed, the same app with every poll going through the stack)."""
    fast, slow = create_app(settings, factory), create_app(settings, factory)
    assert fast.status_poll is not None
    slow.status_poll = None
    with TestClient(fast) as fast_client, TestClient(slow) as slow_client:
        yield fast_client, slow_client


def _job(factory: sessionmaker[Session], clinic: ClinicCtx, **fields: object) -> str:
    now = datetime.now(UTC)
    with factory.begin() as session:
        job = Job(
            clinic_id=uuid.UUID(str(clinic.id)), kind=JobKind.ADAPTATION, status=JobStatus.RUNNING,
            params={"model_id": str(uuid.uuid4()), "options": {"iterations": 100}},
            progress_step=3, progress_total=100, loss=0.25, eta_seconds=12.5, attempts=1,
            started_at=now, heartbeat_at=now, **fields,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return str(job.id)


def _seen(r: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers; Server-Timing must be there (its value differs per request)."""
    headers = dict(r.headers)
    assert TIMING.match(headers.pop("server-timing", "")), r.headers
    headers.pop("date", None)
    return r.status_code, r.content, headers


def test_fast_path_answers_as_the_route_does(
    settings: Settings,
    session_factory: sessionmaker[Session],
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
) -> None:
    job = _job(session_factory, clinic_a)
    url = f"/v1/jobs/{job}"
    with _clients(settings, session_factory) as (fast, slow):
        first = fast.get(url, headers=clinic_a.headers)
        assert first.status_code == 200 and first.json()["progress"]["step"] == 3
        etag = first.headers["etag"]
        auth = clinic_a.headers
        requests: list[tuple[str, dict[str, str]]] = [
            (url, auth),
            (url, {**auth, "If-None-Match": etag}),  # 304 with the ETag, no body
            (url, {**auth, "If-None-Match": f'"stale", W/{etag}'}),
            (url, {**auth, "If-None-Match": "*"}),
            (url, {**auth, "If-None-Match": '"stale"'}),
            (url, clinic_b.headers),  # another clinic's job reads as missing
            (f"/v1/jobs/{uuid.uuid4()}", auth),
            (url.upper().replace("/V1/JOBS/", "/v1/jobs/"), auth),
            (url, {}),  # 401: no key
            (url, {"Authorization": "Bearer nope"}),  # 401: malformed
            (url, {"Authorization": f"Bearer {clinic_a.key[:-2]}xx"}),  # 401: unknown
            (url, {"Authorization": f"Basic {clinic_a.key}"}),  # 401: not a bearer
            (url.replace("-", ""), auth),  # not canonical: the route answers (200)
            ("/v1/jobs/not-a-uuid", auth),  # 422 from FastAPI's validation
        ]
        for path, headers in requests:
            got = _seen(fast.get(path, headers=headers))
            assert got == _seen(slow.get(path, headers=headers)), (path, headers)
        statuses = [fast.get(path, headers=headers).status_code for path, headers in requests]
        assert statuses == [200, 304, 304, 304, 200, 404, 404, 200, 401, 401, 401, 401, 200, 422]
        not_modified = fast.get(url, headers={**auth, "If-None-Match": etag})
        assert not_modified.content == b"" and not_modified.headers["etag"] == etag
        missing = fast.get(url, headers=clinic_b.headers).json()
        assert missing["error"]["code"] == "not_found" and job in missing["error"]["message"]
        refused = fast.get(url)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in refused.json()["error"]["message"]

        with session_factory.begin() as session:  # the job moves on: a new body and ETag
            session.execute(text("UPDATE jobs SET progress_step = 4 WHERE id = :id"), {"id": job})
        moved = fast.get(url, headers={**auth, "If-None-Match": etag})
        assert moved.status_code == 200 and moved.json()["progress"]["step"] == 4
        assert moved.headers["etag"] != etag
        assert _seen(moved)[1:] == _seen(slow.get(url, headers=auth))[1:]
        assert moved.json() == fast.get("/v1/jobs", headers=auth).json()["items"][0]


def test_the_poll_stays_documented(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
    poll = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert poll["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobOut"
    }
    assert "If-None-Match" in poll["responses"]["304"]["description"]
    assert poll["security"] == [{"HTTPBearer": []}]
    assert {"401", "404", "503"} <= set(poll["responses"])


def test_fast_path_takes_plain_polls_only(settings: Settings) -> None:
    poll = create_app(settings).status_poll
    assert isinstance(poll, StatusPoll)
    job = uuid.uuid4()

    def scope(path: str, method: str = "GET", *headers: tuple[bytes, bytes]) -> dict[str, object]:
        return {"type": "http", "method": method, "path": path, "root_path": "",
                "headers": [(b"authorization", b"Bearer st_x"), *headers]}  # fmt: skip

    assert poll.match(scope(f"/v1/jobs/{job}")) == (job, b"Bearer st_x", None)
    assert poll.match(scope(f"/v1/jobs/{job}", "GET", (b"if-none-match", b'"a"'))) == (
        job, b"Bearer st_x", b'"a"'
    )  # fmt: skip
    assert poll.match(scope(f"/v1/jobs/{job}", "GET", (b"content-length", b"0"))) is not None
    declined = [
        scope(f"/v1/jobs/{job}", "POST"),
        scope(f"/v1/jobs/{job}", "HEAD"),
        scope(f"/v1/jobs/{job}/"),
        scope(f"/v1/jobs/{job}/cancel"),
        scope(f"/v1/jobs/{job.hex}"),
        scope(f"/v1/jobs/{str(job)[:4]}_{str(job)[5:]}"),  # uuid.UUID("1234_678-...") parses
        scope(f"/v1/jobs/{str(job)[:-1]} "),
        scope(f"/v1/jobs/{job}", "GET", (b"content-length", b"2")),
        scope(f"/v1/jobs/{job}", "GET", (b"transfer-encoding", b"chunked")),
        scope(f"/v1/jobs/{job}", "GET", (b"authorization", b"Bearer st_y")),
        {**scope(f"/v1/jobs/{job}"), "root_path": "/api"},
    ]
    for request in declined:
        assert poll.match(request) is None, request


def test_poll_and_other_routes_share_the_rate_limit(
    settings: Settings,
    session_factory: sessionmaker[Session],
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 5})
    url = f"/v1/jobs/{_job(session_factory, clinic_a)}"
    refusals = []
    with _clients(limited, session_factory) as (fast, slow):
        for client in (fast, slow):
            for path in (url, "/v1/jobs", url, "/v1/jobs", url):
                assert client.get(path, headers=clinic_a.headers).status_code == 200
            for path in (url, "/v1/jobs"):
                refused = client.get(path, headers=clinic_a.headers)
                assert refused.status_code == 429, refused.text
                assert refused.json()["error"]["code"] == "rate_limited"
                assert 1 <= int(refused.headers["retry-after"]) <= 2
                refusals.append(_seen(refused))
            assert client.get(url, headers=clinic_b.headers).status_code == 404  # its own bucket
    assert refusals[0] == refusals[2]  # the poll's 429, with and without the fast path


def test_poll_answers_503_while_the_database_is_down(settings: Settings, tmp_path: Path) -> None:
    down = settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        "data_dir": tmp_path,
    })  # fmt: skip
    url = f"/v1/jobs/{uuid.uuid4()}"
    headers = {"Authorization": "Bearer st_" + "a" * 40}
    with _clients(down) as (fast, slow):
        r = fast.get(url, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "database_unavailable"
        assert _seen(r) == _seen(slow.get(url, headers=headers))


def test_poll_reads_on_after_its_connections_are_dropped(
    settings: Settings, session_factory: sessionmaker[Session], engine: Engine, clinic_a: ClinicCtx
) -> None:
    url = f"/v1/jobs/{_job(session_factory, clinic_a)}"
    with _clients(settings, session_factory) as (fast, _):
        for _ in range(20):  # every reader thread connects and reads through the driver
            assert fast.get(url, headers=clinic_a.headers).status_code == 200
        with engine.connect() as conn:  # as a database restart would, for the status reads
            dropped = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query LIKE '%api_keys.key_hash%'"
            )).scalar()  # fmt: skip
        assert dropped
        for _ in range(20):
            r = fast.get(url, headers=clinic_a.headers)
            assert r.status_code == 200, r.text
            assert r.json()["progress"]["step"] == 3
