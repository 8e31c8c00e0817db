"""Job creation (queued + message on the broker), validation, limits, cancel, artefacts."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.core.models import Job, JobStatus, utcnow
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx, counts, upload_model, upload_scan


def _setup(
    client: TestClient, clinic: ClinicCtx, weights: bytes, phantom: tuple[bytes, bytes]
) -> tuple[str, str, str]:
    model = upload_model(client, clinic, weights)
    train = upload_scan(client, clinic, phantom[0], phantom[1], annotated_slices="[4, 10]")
    target = upload_scan(client, clinic, phantom[0])
    return str(model["id"]), str(train["id"]), str(target["id"])


def _messages(broker: redis.Redis) -> list[str]:
    """Job ids of the run_job messages waiting in the broker's gpu queue."""
    ids = []
    for raw in broker.lrange("gpu", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "spottune.run_job"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def test_adaptation_is_queued_and_sent(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    body = {
        "model_id": model,
        "train_scan_ids": [train],
        "target_scan_ids": [target],
        "options": {"iterations": 5, "lambda_reg": 0.1},
    }
    r = client.post("/v1/adaptations", headers=clinic_a.headers, json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "adaptation"
    assert job["params"]["method"] == "spottune" and job["params"]["options"]["iterations"] == 5
    assert job["progress"] == {"step": 0, "total": 0, "loss": None, "eta_seconds": None}
    assert _messages(broker) == [job["id"]]
    shown = client.get(f"/v1/jobs/{job['id']}", headers=clinic_a.headers).json()
    assert shown["status"] == "queued"


def test_segmentation_and_pretraining(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    seg = client.post(
        "/v1/segmentations",
        headers=clinic_a.headers,
        json={"model_id": model, "scan_ids": [target, train]},
    )
    assert seg.status_code == 202, seg.text
    pre = client.post(
        "/v1/pretrainings",
        headers=clinic_a.headers,
        json={"train_scan_ids": [train], "options": {"width": 4, "depth": 2}},
    )
    assert pre.status_code == 202, pre.text
    assert pre.json()["params"]["options"]["width"] == 4
    assert sorted(_messages(broker)) == sorted([seg.json()["id"], pre.json()["id"]])
    listed = client.get("/v1/jobs?kind=pretraining", headers=clinic_a.headers).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == pre.json()["id"]
    assert client.get("/v1/jobs?status=queued", headers=clinic_a.headers).json()["total"] == 2
    r = client.get("/v1/jobs?status=bogus", headers=clinic_a.headers)
    assert r.status_code == 422


def test_invalid_job_requests_create_nothing(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    missing = str(uuid.uuid4())
    cases = [
        (
            "/v1/adaptations",
            {"model_id": model, "train_scan_ids": [train], "options": {"iterationz": 3}},
            422,
            "invalid_options",
        ),
        (
            "/v1/adaptations",
            {"model_id": model, "train_scan_ids": [train], "options": {"iterations": -1}},
            422,
            "invalid_options",
        ),
        (
            "/v1/adaptations",
            {"model_id": model, "train_scan_ids": [train], "method": "magic"},
            422,
            "validation_error",
        ),
        (
            "/v1/adaptations",
            {"model_id": model, "train_scan_ids": [target]},
            422,
            "scan_without_mask",
        ),
        ("/v1/adaptations", {"model_id": missing, "train_scan_ids": [train]}, 404, "not_found"),
        ("/v1/adaptations", {"model_id": model, "train_scan_ids": [missing]}, 404, "not_found"),
        (
            "/v1/adaptations",
            {"model_id": model, "train_scan_ids": [train], "extra": 1},
            422,
            "validation_error",
        ),
        ("/v1/segmentations", {"model_id": model, "scan_ids": []}, 422, "validation_error"),
        ("/v1/segmentations", {"model_id": model, "scan_ids": ["nope"]}, 422, "validation_error"),
        (
            "/v1/pretrainings",
            {"train_scan_ids": [train], "options": {"depth": 99}},
            422,
            "invalid_options",
        ),
        ("/v1/pretrainings", {"train_scan_ids": [target]}, 422, "scan_without_mask"),
    ]
    before = counts(session_factory)
    for path, body, status, code in cases:
        r = client.post(path, headers=clinic_a.headers, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code, (body, r.text)
    r = client.post("/v1/adaptations", headers=clinic_a.headers, content=b"{not json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert counts(session_factory) == before and _messages(broker) == []


def test_annotated_slices_checked_against_model_axis(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    model = upload_model(client, clinic_a, weights_bytes)
    # phantom is 32 x 32 x 24 (RAS): slice 30 exists along x/y but not along z (axis 2)
    scan = upload_scan(client, clinic_a, phantom[0], phantom[1], annotated_slices="[30]")
    r = client.post(
        "/v1/adaptations",
        headers=clinic_a.headers,
        json={"model_id": model["id"], "train_scan_ids": [scan["id"]]},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_slices"


def test_concurrency_limit_is_429(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    body = {"model_id": model, "scan_ids": [target]}
    for _ in range(3):  # settings.clinic_max_concurrent_jobs
        assert (
            client.post("/v1/segmentations", headers=clinic_a.headers, json=body).status_code == 202
        )
    r = client.post("/v1/segmentations", headers=clinic_a.headers, json=body)
    assert r.status_code == 429 and "limit 3" in r.json()["error"]["message"]
    first = client.get("/v1/jobs", headers=clinic_a.headers).json()["items"][0]["id"]
    assert client.post(f"/v1/jobs/{first}/cancel", headers=clinic_a.headers).status_code == 200
    assert client.post("/v1/segmentations", headers=clinic_a.headers, json=body).status_code == 202


def test_cancel(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> None:
    model, _, target = _setup(client, clinic_a, weights_bytes, phantom)
    body = {"model_id": model, "scan_ids": [target]}
    queued = client.post("/v1/segmentations", headers=clinic_a.headers, json=body).json()["id"]
    running = client.post("/v1/segmentations", headers=clinic_a.headers, json=body).json()["id"]
    with session_factory.begin() as session:
        job = session.get(Job, uuid.UUID(running))
        assert job is not None
        job.status, job.started_at, job.attempts = JobStatus.RUNNING, utcnow(), 1
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=clinic_a.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    r = client.post(f"/v1/jobs/{running}/cancel", headers=clinic_a.headers)
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=clinic_a.headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    # a model or scan used by a running job cannot be deleted
    assert client.delete(f"/v1/models/{model}", headers=clinic_a.headers).status_code == 409
    assert client.delete(f"/v1/scans/{target}", headers=clinic_a.headers).status_code == 409


def test_broker_down_still_accepts(
    client: TestClient,
    settings: Settings,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
) -> None:
    model, _, target = _setup(client, clinic_a, weights_bytes, phantom)
    down = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "broker_send_timeout_s": 0.5}
    )
    with TestClient(create_app(down, client.app.state.session_factory)) as c:  # type: ignore[attr-defined]
        r = c.post(
            "/v1/segmentations",
            headers=clinic_a.headers,
            json={"model_id": model, "scan_ids": [target]},
        )
    assert r.status_code == 202 and r.json()["status"] == "queued"
