"""Erase means erased, on the results of real jobs: deleting a scan takes every mask, metric and
report made from it; deleting a job takes its artefacts; purging a clinic leaves no row."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from spottune.core.models import (
    ApiKey,
    Blob,
    BlobChunk,
    Clinic,
    Job,
    Mask,
    Metric,
    Model,
    Policy,
    Report,
    Scan,
)
from tests.worker.helpers import TINY_ADAPT, phantom_files, tiny_config


@dataclass
class Finished:
    client: TestClient
    clinic_id: uuid.UUID
    name: str
    train: str
    target: str  # annotated: has masks and metrics from both jobs
    other: str  # unannotated target
    adaptation: dict[str, Any]
    segmentation: dict[str, Any]


def _upload(client: TestClient, seed: int, mask: bool, annotated: str | None = None) -> str:
    image, reference = phantom_files(seed, "b")
    files: dict[str, Any] = {"image": ("head.nii.gz", image)}
    if mask:
        files["mask"] = ("brain.nii.gz", reference)
    data = {"annotated_slices": annotated} if annotated else {}
    r = client.post("/v1/scans", files=files, data=data)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _run(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 90
    while (job := client.get(f"/v1/jobs/{r.json()['id']}").json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    return dict(job)


def _clinic(client_headers: dict[str, str]) -> TestClient:
    from spottune.app.main import create_app

    return TestClient(create_app(), headers=client_headers)


@pytest.fixture
def finished(worker) -> Finished:  # type: ignore[no-untyped-def]
    from spottune.app.admin import create_clinic
    from spottune.ml.checkpoint import weights_to_bytes
    from spottune.ml.factory import build_model

    name = f"erase-{uuid.uuid4().hex[:8]}"
    created = create_clinic(name)
    client = _clinic({"Authorization": f"Bearer {created.key}"})
    config = tiny_config()
    weights = weights_to_bytes(build_model(config), config)
    model = client.post("/v1/models", data={"config": config.to_json()},
                        files={"weights": ("w.safetensors", weights)})
    assert model.status_code == 201, model.text
    train = _upload(client, 30, mask=True, annotated="[4, 8]")
    target, other = _upload(client, 31, mask=True), _upload(client, 32, mask=False)
    adaptation = _run(client, "/v1/adaptations", {
        "model_id": model.json()["id"], "train_scan_ids": [train],
        "target_scan_ids": [target, other], "options": TINY_ADAPT})
    segmentation = _run(client, "/v1/segmentations", {
        "model_id": adaptation["result"]["model_id"], "scan_ids": [target]})
    return Finished(client, created.clinic_id, name, train, target, other, adaptation,
                    segmentation)


ORPHANS = """
    SELECT count(*) FROM blobs b WHERE b.clinic_id = :clinic AND NOT EXISTS (
      SELECT 1 FROM scans s WHERE b.id IN (s.image_blob_id, s.mask_blob_id)
      UNION ALL SELECT 1 FROM scan_dicom d WHERE d.headers_blob_id = b.id
      UNION ALL SELECT 1 FROM models m WHERE m.weights_blob_id = b.id
      UNION ALL SELECT 1 FROM masks k WHERE k.blob_id = b.id
      UNION ALL SELECT 1 FROM reports r WHERE b.id IN (r.html_blob_id, r.png_blob_id))"""


def _orphan_blobs(factory, clinic_id: uuid.UUID) -> int:  # type: ignore[no-untyped-def]
    """Blobs of the clinic that nothing refers to any more (what an erase must not leave)."""
    with factory() as session:
        return int(session.scalar(text(ORPHANS), {"clinic": clinic_id}) or 0)


def _count(factory, table: Any, *where: Any) -> int:  # type: ignore[no-untyped-def]
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _report_blobs(factory, job_id: str) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    with factory() as session:
        report = session.get(Report, uuid.UUID(job_id))
        assert report is not None
        return [b for b in (report.html_blob_id, report.png_blob_id) if b is not None]


def test_deleting_a_scan_erases_what_was_made_from_it(finished: Finished, factory) -> None:
    c, adapt, seg = finished.client, finished.adaptation, finished.segmentation
    target = uuid.UUID(finished.target)
    report_blobs = _report_blobs(factory, adapt["id"])
    with factory() as session:
        target_masks = session.execute(select(Mask.id, Mask.blob_id)
                                       .where(Mask.scan_id == target)).all()
    assert len(target_masks) == 2 and _count(factory, Metric, Metric.scan_id == target) == 3

    assert c.delete(f"/v1/scans/{finished.target}").status_code == 204

    for mask_id, _ in target_masks:
        assert c.get(f"/v1/masks/{mask_id}").status_code == 404
    assert _count(factory, Mask, Mask.scan_id == target) == 0
    assert _count(factory, Metric, Metric.scan_id == target) == 0
    # the adaptation's report pictured the scan: it is gone, blobs and all
    assert c.get(f"/v1/jobs/{adapt['id']}/report").status_code == 404
    assert c.get(f"/v1/jobs/{adapt['id']}/report.png").status_code == 404
    blob_ids = report_blobs + [b for _, b in target_masks]
    assert _count(factory, Blob, Blob.id.in_(blob_ids)) == 0
    assert _count(factory, BlobChunk, BlobChunk.blob_id.in_(blob_ids)) == 0
    # the jobs' results no longer name the scan's masks or metrics
    result = c.get(f"/v1/jobs/{adapt['id']}").json()["result"]
    masks_left = c.get(f"/v1/jobs/{adapt['id']}/masks").json()["items"]
    assert [m["scan_id"] for m in masks_left] == [finished.other]
    assert result["mask_ids"] == [masks_left[0]["id"]]
    assert finished.target not in str(result["metrics"])
    assert c.get(f"/v1/jobs/{seg['id']}").json()["result"]["mask_ids"] == []
    # what was not made from the scan stays
    assert c.get(f"/v1/models/{adapt['result']['model_id']}").status_code == 200
    assert c.get(f"/v1/scans/{finished.train}/image").status_code == 200
    assert _orphan_blobs(factory, finished.clinic_id) == 0


def test_deleting_a_job_erases_its_artefacts(finished: Finished, factory) -> None:
    c, adapt, seg = finished.client, finished.adaptation, finished.segmentation
    job_id, model_id = uuid.UUID(adapt["id"]), adapt["result"]["model_id"]
    mask_ids = adapt["result"]["mask_ids"]
    report_blobs = _report_blobs(factory, adapt["id"])

    assert c.delete(f"/v1/jobs/{adapt['id']}").status_code == 204

    assert c.get(f"/v1/jobs/{adapt['id']}").status_code == 404
    assert c.get(f"/v1/models/{model_id}").status_code == 404  # the model it trained
    for mask_id in mask_ids:
        assert c.get(f"/v1/masks/{mask_id}").status_code == 404
    for table, column in ((Mask, Mask.job_id), (Metric, Metric.job_id), (Policy, Policy.job_id),
                          (Report, Report.job_id), (Model, Model.job_id)):
        assert _count(factory, table, column == job_id) == 0, table
    assert _count(factory, Blob, Blob.id.in_(report_blobs)) == 0
    # the segmentation made with the deleted model keeps its masks
    seg_masks = c.get(f"/v1/jobs/{seg['id']}/masks").json()["items"]
    assert len(seg_masks) == 1 and c.get(f"/v1/masks/{seg_masks[0]['id']}").status_code == 200
    assert c.delete(f"/v1/jobs/{adapt['id']}").status_code == 404
    assert _orphan_blobs(factory, finished.clinic_id) == 0


def test_a_queued_job_cannot_be_deleted(finished: Finished, factory) -> None:
    with factory.begin() as session:
        session.execute(text("UPDATE jobs SET status = 'queued' WHERE id = :id"),
                        {"id": uuid.UUID(finished.segmentation["id"])})
    r = finished.client.delete(f"/v1/jobs/{finished.segmentation['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_active"
    assert _count(factory, Job, Job.id == uuid.UUID(finished.segmentation["id"])) == 1
    with factory.begin() as session:
        session.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = :id"),
                        {"id": uuid.UUID(finished.segmentation["id"])})


def test_purge_clinic_removes_the_clinic_and_all_its_data(finished: Finished, factory) -> None:
    from spottune.app.admin import create_clinic
    from spottune.cli.main import app

    bystander = create_clinic(f"bystander-{uuid.uuid4().hex[:8]}")
    with _clinic({"Authorization": f"Bearer {bystander.key}"}) as other:
        kept = _upload(other, 40, mask=False)
    runner = CliRunner()
    refused = runner.invoke(app, ["admin", "purge-clinic", finished.name])
    assert refused.exit_code == 2 and _count(factory, Clinic, Clinic.id == finished.clinic_id)
    done = runner.invoke(app, ["admin", "purge-clinic", finished.name, "--yes"])
    assert done.exit_code == 0, done.output
    assert "purged clinic" in done.output

    cid = finished.clinic_id
    for table in (Clinic, ApiKey, Scan, Model, Job, Mask, Blob):
        column = table.id if table is Clinic else table.clinic_id
        assert _count(factory, table, column == cid) == 0, table
    jobs = [uuid.UUID(finished.adaptation["id"]), uuid.UUID(finished.segmentation["id"])]
    for table in (Metric, Policy, Report):
        assert _count(factory, table, table.job_id.in_(jobs)) == 0, table
    assert finished.client.get("/v1/scans").status_code == 401  # its key went with it
    with _clinic({"Authorization": f"Bearer {bystander.key}"}) as other:
        assert other.get(f"/v1/scans/{kept}/image").status_code == 200
    assert _orphan_blobs(factory, bystander.clinic_id) == 0
