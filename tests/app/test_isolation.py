"""Every endpoint answers 404 for another clinic's objects, exactly as for missing ones."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.core import blobs
from spottune.core.models import Mask
from tests.app.helpers import ClinicCtx, counts, upload_model, upload_scan

ENDPOINTS = [
    ("GET", "/v1/models/{model}", None),
    ("GET", "/v1/models/{model}/weights", None),
    ("DELETE", "/v1/models/{model}", None),
    ("GET", "/v1/scans/{scan}", None),
    ("GET", "/v1/scans/{scan}/image", None),
    ("GET", "/v1/scans/{scan}/mask", None),
    ("DELETE", "/v1/scans/{scan}", None),
    ("GET", "/v1/jobs/{job}", None),
    ("POST", "/v1/jobs/{job}/cancel", None),
    ("GET", "/v1/jobs/{job}/policy", None),
    ("GET", "/v1/jobs/{job}/report", None),
    ("GET", "/v1/jobs/{job}/report.png", None),
    ("GET", "/v1/jobs/{job}/masks", None),
    ("GET", "/v1/masks/{mask}", None),
    ("POST", "/v1/adaptations", {"model_id": "{model}", "train_scan_ids": ["{own_scan}"]}),
    ("POST", "/v1/adaptations", {"model_id": "{own_model}", "train_scan_ids": ["{scan}"]}),
    (
        "POST",
        "/v1/adaptations",
        {
            "model_id": "{own_model}",
            "train_scan_ids": ["{own_scan}"],
            "target_scan_ids": ["{scan}"],
        },
    ),
    ("POST", "/v1/segmentations", {"model_id": "{model}", "scan_ids": ["{own_scan}"]}),
    ("POST", "/v1/segmentations", {"model_id": "{own_model}", "scan_ids": ["{scan}"]}),
    ("POST", "/v1/pretrainings", {"train_scan_ids": ["{scan}"]}),
]


@pytest.fixture()
def objects(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: object,
) -> dict[str, str]:
    """Clinic B's model, scan, job and mask, and clinic A's own model and scan."""
    model = str(upload_model(client, clinic_b, weights_bytes)["id"])
    scan = str(upload_scan(client, clinic_b, phantom[0], phantom[1])["id"])
    job = client.post(
        "/v1/segmentations", headers=clinic_b.headers, json={"model_id": model, "scan_ids": [scan]}
    ).json()["id"]
    with session_factory.begin() as session:
        cid = uuid.UUID(str(clinic_b.id))
        blob = blobs.write_blob(session, cid, phantom[1], "application/gzip")
        mask = Mask(
            id=uuid.uuid4(),
            clinic_id=cid,
            job_id=uuid.UUID(job),
            scan_id=uuid.UUID(scan),
            model_id=uuid.UUID(model),
            blob_id=blob.id,
        )
        session.add(mask)
    return {
        "model": model,
        "scan": scan,
        "job": job,
        "mask": str(mask.id),
        "own_model": str(upload_model(client, clinic_a, weights_bytes)["id"]),
        "own_scan": str(upload_scan(client, clinic_a, phantom[0], phantom[1])["id"]),
    }


def _fill(value: object, ids: dict[str, str]) -> object:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "method,path,body", ENDPOINTS, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(ENDPOINTS)]
)
def test_foreign_and_missing_ids_are_404(
    client: TestClient,
    clinic_a: ClinicCtx,
    objects: dict[str, str],
    session_factory: sessionmaker[Session],
    method: str,
    path: str,
    body: object,
) -> None:
    missing = {
        k: (str(uuid.uuid4()) if not k.startswith("own_") else v) for k, v in objects.items()
    }
    before = counts(session_factory)
    for ids in (objects, missing):
        r = client.request(
            method,
            str(_fill(path, ids)),
            headers=clinic_a.headers,
            json=_fill(body, ids) if body else None,
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
    assert counts(session_factory) == before


def test_lists_show_only_own_objects(
    client: TestClient, clinic_a: ClinicCtx, objects: dict[str, str]
) -> None:
    for path, own in (("/v1/models", 1), ("/v1/scans", 1), ("/v1/jobs", 0)):
        page = client.get(path, headers=clinic_a.headers).json()
        assert page["total"] == own, path
