"""Idempotency-Key on POST: a retry answers the same object and creates nothing more."""

from __future__ import annotations

import io
import json
import threading

import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.app.helpers import TINY_CONFIG, ClinicCtx, counts, upload_model, upload_scan


def _scan_post(
    client: TestClient, clinic: ClinicCtx, image: bytes, key: str, site: str = "x"
) -> object:
    return client.post(
        "/v1/scans",
        headers={**clinic.headers, "Idempotency-Key": key},
        files={"image": ("scan.nii.gz", image)},
        data={"site": site},
    )


def test_a_retried_upload_answers_the_same_scan_once(
    client: TestClient, clinic_a: ClinicCtx, phantom: tuple[bytes, bytes], session_factory
) -> None:
    first = _scan_post(client, clinic_a, phantom[0], "upload-1")
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    before = counts(session_factory)
    again = _scan_post(client, clinic_a, phantom[0], "upload-1")  # a new multipart boundary
    assert again.status_code == 201  # type: ignore[attr-defined]
    assert again.json() == first.json()  # type: ignore[attr-defined]
    assert again.headers["idempotent-replayed"] == "true"  # type: ignore[attr-defined]
    assert again.headers["location"] == f"/v1/scans/{first.json()['id']}"  # type: ignore
    assert counts(session_factory) == before


def test_the_same_key_with_another_body_is_a_conflict_and_stores_nothing(
    client: TestClient, clinic_a: ClinicCtx, phantom: tuple[bytes, bytes], session_factory
) -> None:
    assert _scan_post(client, clinic_a, phantom[0], "k").status_code == 201  # type: ignore
    before = counts(session_factory)
    other = _scan_post(client, clinic_a, phantom[0], "k", site="elsewhere")
    assert other.status_code == 409  # type: ignore[attr-defined]
    assert other.json()["error"]["code"] == "idempotency_key_reused"  # type: ignore
    assert counts(session_factory) == before


def test_keys_are_scoped_per_clinic(
    client: TestClient, clinic_a: ClinicCtx, clinic_b: ClinicCtx, phantom: tuple[bytes, bytes]
) -> None:
    a = _scan_post(client, clinic_a, phantom[0], "shared-key")
    b = _scan_post(client, clinic_b, phantom[0], "shared-key")
    assert a.status_code == b.status_code == 201  # type: ignore[attr-defined]
    assert a.json()["id"] != b.json()["id"]  # type: ignore[attr-defined]
    # clinic B's replay shows B's scan, never A's
    replay = _scan_post(client, clinic_b, phantom[0], "shared-key")
    assert replay.json()["id"] == b.json()["id"]  # type: ignore[attr-defined]


def _adapt(client: TestClient, clinic: ClinicCtx, body: dict[str, object], key: str) -> object:
    return client.post(
        "/v1/adaptations", headers={**clinic.headers, "Idempotency-Key": key}, json=body
    )


def test_a_retried_job_request_queues_one_job_and_one_message(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
    session_factory: sessionmaker[Session],
) -> None:
    model = upload_model(client, clinic_a, weights_bytes)
    scan = upload_scan(client, clinic_a, phantom[0], phantom[1])
    body = {"model_id": model["id"], "train_scan_ids": [scan["id"]], "options": {"seed": 3}}
    first = _adapt(client, clinic_a, body, "adapt-1")
    assert first.status_code == 202, first.text  # type: ignore[attr-defined]
    # the same JSON, keys in another order: still the same request
    reordered = dict(reversed(list(body.items())))
    again = _adapt(client, clinic_a, reordered, "adapt-1")
    assert again.status_code == 202  # type: ignore[attr-defined]
    assert again.json()["id"] == first.json()["id"]  # type: ignore[attr-defined]
    assert counts(session_factory)["jobs"] == 1
    assert broker.llen("gpu") == 1


def test_a_refused_request_does_not_use_up_its_key(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    model = upload_model(client, clinic_a, weights_bytes)
    scan = upload_scan(client, clinic_a, phantom[0], phantom[1])
    bad = {"model_id": model["id"], "train_scan_ids": [scan["id"]], "options": {"nope": 1}}
    assert _adapt(client, clinic_a, bad, "retry-me").status_code == 422  # type: ignore
    good = {"model_id": model["id"], "train_scan_ids": [scan["id"]]}
    assert _adapt(client, clinic_a, good, "retry-me").status_code == 202  # type: ignore


def test_concurrent_requests_with_one_key_create_one_object(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, session_factory
) -> None:
    headers = {**clinic_a.headers, "Idempotency-Key": "race"}
    answers: list[tuple[int, str]] = []

    def post() -> None:
        r = client.post(
            "/v1/models",
            headers=headers,
            files={"weights": ("w.safetensors", io.BytesIO(weights_bytes))},
            data={"config": json.dumps(TINY_CONFIG), "name": "raced"},
        )
        answers.append((r.status_code, r.json().get("id", r.text)))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 4
    created = {ident for code, ident in answers if code == 201}
    assert len(created) == 1, answers
    assert all(code in (201, 409) for code, _ in answers), answers
    assert counts(session_factory)["models"] == 1


def test_a_malformed_key_is_refused(client: TestClient, clinic_a: ClinicCtx) -> None:
    r = client.post(
        "/v1/webhooks",
        headers={**clinic_a.headers, "Idempotency-Key": "x" * 300},
        json={"url": "http://127.0.0.1:9/hook", "secret": "s" * 20},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_idempotency_key"
