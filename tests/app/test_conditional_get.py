"""ETag / If-None-Match: an unchanged job or file answers 304 without a body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from fastapi.testclient import TestClient

from tests.app.helpers import ClinicCtx, upload_model, upload_scan


def _job(client: TestClient, clinic: ClinicCtx, model_id: str, scan_id: str, **extra) -> dict:
    r = client.post(
        "/v1/segmentations",
        headers=clinic.headers,
        json={"model_id": model_id, "scan_ids": [scan_id], **extra},
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


def test_job_status_answers_304_until_it_changes(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    model = upload_model(client, clinic_a, weights_bytes)
    scan = upload_scan(client, clinic_a, phantom[0])
    job = _job(client, clinic_a, model["id"], scan["id"])
    url = f"/v1/jobs/{job['id']}"
    first = client.get(url, headers=clinic_a.headers)
    etag = first.headers["etag"]
    same = client.get(url, headers={**clinic_a.headers, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    assert client.post(f"{url}/cancel", headers=clinic_a.headers).status_code == 200
    changed = client.get(url, headers={**clinic_a.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != etag


def test_downloads_answer_304_for_the_file_the_client_has(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes
) -> None:
    model = upload_model(client, clinic_a, weights_bytes)
    url = f"/v1/models/{model['id']}/weights"
    first = client.get(url, headers=clinic_a.headers)
    assert first.content == weights_bytes
    assert first.headers["etag"] == f'"{model["sha256"]}"'
    again = client.get(url, headers={**clinic_a.headers, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    stale = client.get(url, headers={**clinic_a.headers, "If-None-Match": '"0123"'})
    assert stale.status_code == 200 and stale.content == weights_bytes


def test_job_filters_and_device_routing(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
) -> None:
    broker.delete("cpu")
    one = upload_model(client, clinic_a, weights_bytes)
    two = upload_model(client, clinic_a, weights_bytes)
    scan = upload_scan(client, clinic_a, phantom[0])
    on_gpu = _job(client, clinic_a, one["id"], scan["id"])
    on_cpu = _job(client, clinic_a, two["id"], scan["id"], device="cpu")
    assert broker.llen("gpu") == 1 and broker.llen("cpu") == 1  # each on its own queue
    broker.delete("cpu")

    def ids(**query: str) -> list[str]:
        r = client.get("/v1/jobs", headers=clinic_a.headers, params=query)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert ids(model_id=one["id"]) == [on_gpu["id"]]
    assert ids(model_id=two["id"], kind="segmentation", status="queued") == [on_cpu["id"]]
    assert ids(kind="adaptation") == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert set(ids(created_after=past)) == {on_gpu["id"], on_cpu["id"]}
    assert ids(created_after=on_cpu["created_at"]) == []
    bad = client.get("/v1/jobs", headers=clinic_a.headers, params={"created_after": "soon"})
    assert bad.status_code == 422
