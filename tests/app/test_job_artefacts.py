"""Artefacts a worker writes (policy, report, masks) as the API serves them."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.core import blobs
from spottune.core.models import Job, JobStatus, Mask, Policy, Report
from tests.app.helpers import ClinicCtx
from tests.app.test_jobs import _setup

# as the worker stores it (spottune.contract.PolicyRecord.to_dict())
RECORD = {
    "gate_names": ["init.conv", "init.block0", "out.conv"], "gate_stages": ["init", "init", "out"],
    "frequency": [1.0, 0.0, 0.25], "probability": [0.8, 0.2, 0.3], "policy": "instance",
    "lambda_reg": 0.01, "method": "spottune",
}


def test_artefacts(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    job_id = client.post(
        "/v1/adaptations",
        headers=clinic_a.headers,
        json={"model_id": model, "train_scan_ids": [train], "target_scan_ids": [target]},
    ).json()["id"]
    for path in ("policy", "report", "report.png"):
        r = client.get(f"/v1/jobs/{job_id}/{path}", headers=clinic_a.headers)
        assert r.status_code == 404 and r.json()["error"]["code"].endswith("not_ready")
    assert client.get(f"/v1/jobs/{job_id}/masks", headers=clinic_a.headers).json()["total"] == 0
    # what a worker writes when the job succeeds
    with session_factory.begin() as session:
        cid, jid = uuid.UUID(str(clinic_a.id)), uuid.UUID(job_id)
        mask_blob = blobs.write_blob(session, cid, phantom[1], "application/gzip")
        html = blobs.write_blob(session, cid, b"<html>report</html>", "text/html")
        png = blobs.write_blob(session, cid, b"\x89PNG fake", "image/png")
        session.add(
            Mask(
                clinic_id=cid,
                job_id=jid,
                scan_id=uuid.UUID(target),
                model_id=uuid.UUID(model),
                blob_id=mask_blob.id,
            )
        )
        session.add(Policy(job_id=jid, data=RECORD))
        session.add(Report(job_id=jid, html_blob_id=html.id, png_blob_id=png.id))
    policy = client.get(f"/v1/jobs/{job_id}/policy", headers=clinic_a.headers).json()
    assert policy["job_id"] == job_id
    assert (policy["method"], policy["policy"], policy["lambda_reg"]) == ("spottune", "instance",
                                                                         0.01)
    assert policy["gates"][0] == {"name": "init.conv", "stage": "init",
                                  "finetune_probability": 0.8, "frequency": 1.0}
    assert [s["stage"] for s in policy["stages"]] == ["init", "out"]
    assert policy["stages"][0]["gates"] == 2
    assert policy["stages"][0]["finetune_probability"] == pytest.approx(0.5)
    assert policy["stages"][0]["frequency"] == pytest.approx(0.5)
    assert policy["finetuned_gates"] == ["init.conv"]
    r = client.get(f"/v1/jobs/{job_id}/report", headers=clinic_a.headers)
    assert r.headers["content-type"].startswith("text/html") and b"report" in r.content
    r = client.get(f"/v1/jobs/{job_id}/report.png", headers=clinic_a.headers)
    assert r.headers["content-type"] == "image/png"
    masks = client.get(f"/v1/jobs/{job_id}/masks", headers=clinic_a.headers).json()
    assert masks["total"] == 1 and masks["items"][0]["scan_id"] == target
    r = client.get(f"/v1/masks/{masks['items'][0]['id']}", headers=clinic_a.headers)
    assert r.status_code == 200 and r.content == phantom[1]
    # deleting the scan removes its masks too
    with session_factory.begin() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.status = JobStatus.SUCCEEDED
    assert client.delete(f"/v1/scans/{target}", headers=clinic_a.headers).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}/masks", headers=clinic_a.headers).json()["total"] == 0
    assert client.delete(f"/v1/models/{model}", headers=clinic_a.headers).status_code == 204
