"""Limits that keep one clinic from crowding out another: jobs per clinic, requests per key,
and a readiness probe that stays cheap when probed often."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx, upload_model, upload_scan
from tests.services import REDIS_PORT


def test_job_limit_answers_429_to_the_busy_clinic_only(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
) -> None:
    bodies = {}
    for clinic in (clinic_a, clinic_b):
        model = upload_model(client, clinic, weights_bytes)
        scan = upload_scan(client, clinic, phantom[0])
        bodies[clinic.key] = {"model_id": model["id"], "scan_ids": [scan["id"]]}
    a = bodies[clinic_a.key]
    for _ in range(3):  # settings.clinic_max_concurrent_jobs
        assert client.post("/v1/segmentations", headers=clinic_a.headers, json=a).status_code == 202
    refused = client.post("/v1/segmentations", headers=clinic_a.headers, json=a)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_jobs"
    assert "limit 3" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "30"
    b = client.post("/v1/segmentations", headers=clinic_b.headers, json=bodies[clinic_b.key])
    assert b.status_code == 202, b.text


def test_request_rate_is_limited_per_key(
    settings: Settings,
    session_factory: sessionmaker[Session],
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 5})
    with TestClient(create_app(limited, session_factory)) as client:
        for _ in range(5):
            assert client.get("/v1/jobs", headers=clinic_a.headers).status_code == 200
        refused = client.get("/v1/jobs", headers=clinic_a.headers)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 2  # one request a second refills
        assert client.get("/v1/jobs", headers=clinic_b.headers).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes are not API calls


def _connections_received() -> int:
    return int(redis.Redis(host="127.0.0.1", port=REDIS_PORT).info()["total_connections_received"])


def test_readyz_does_not_open_a_broker_connection_per_probe(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    before = _connections_received()
    for _ in range(20):
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert _connections_received() - before <= 2
