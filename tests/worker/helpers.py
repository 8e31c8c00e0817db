"""Tiny inputs written straight into the database, and waiting for jobs."""

from __future__ import annotations

import gzip
import hashlib
import time
import uuid
from datetime import timedelta
from typing import Any

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.core.blobs import write_blob
from spottune.core.models import Clinic, Job, JobKind, JobStatus, Model, Scan, utcnow
from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.factory import build_model
from spottune.ml.synthetic import make_phantom

SHAPE = (32, 32, 16)  # voxels; 1 mm isotropic
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
TINY_SOURCE = {"width": 4, "depth": 2, "blocks_per_stage": 1, "spacing_mm": [1.0, 1.0],
               "patch_size": 32, "iterations": 6, "batch_size": 4}
TINY_ADAPT = {"iterations": 4, "batch_size": 4}


def tiny_config() -> ModelConfig:
    return ModelConfig(width=4, depth=2, blocks_per_stage=1,
                       preprocessing=Preprocessing(spacing_mm=(1.0, 1.0)))


def nifti_gz(array: np.ndarray, dtype: type = np.float32) -> bytes:
    return gzip.compress(nib.Nifti1Image(array.astype(dtype), AFFINE).to_bytes(), compresslevel=1)


def phantom_files(seed: int, site: str) -> tuple[bytes, bytes]:
    """(image .nii.gz bytes, mask .nii.gz bytes) of a tiny phantom head."""
    image, mask = make_phantom(SHAPE, seed=seed, site=site)  # type: ignore[arg-type]
    return nifti_gz(image), nifti_gz(mask, np.uint8)


def add_clinic(session: Session) -> uuid.UUID:
    clinic = Clinic(name=f"clinic-{uuid.uuid4().hex[:8]}")
    session.add(clinic)
    session.flush()
    return clinic.id


def add_scan(session: Session, clinic_id: uuid.UUID, *, seed: int, site: str = "b",
             with_mask: bool = True, annotated: list[int] | None = None) -> uuid.UUID:
    image, mask = phantom_files(seed, site)
    image_blob = write_blob(session, clinic_id, image, "application/gzip")
    mask_blob = write_blob(session, clinic_id, mask, "application/gzip") if with_mask else None
    scan = Scan(clinic_id=clinic_id, site=site, subject=f"s{seed}", image_blob_id=image_blob.id,
                mask_blob_id=None if mask_blob is None else mask_blob.id,
                annotated_slices=annotated, shape=list(SHAPE), spacing=[1.0, 1.0, 1.0],
                orientation="RAS", sha256=hashlib.sha256(image).hexdigest())
    session.add(scan)
    session.flush()
    return scan.id


def add_model(session: Session, clinic_id: uuid.UUID, seed: int = 0) -> uuid.UUID:
    import torch

    torch.manual_seed(seed)
    config = tiny_config()
    weights = weights_to_bytes(build_model(config), config)
    blob = write_blob(session, clinic_id, weights, "application/octet-stream")
    model = Model(clinic_id=clinic_id, name="tiny-source", config=config.model_dump(mode="json"),
                  weights_blob_id=blob.id, size_bytes=blob.size)
    session.add(model)
    session.flush()
    return model.id


def add_job(session: Session, clinic_id: uuid.UUID, kind: JobKind, params: dict[str, Any],
            *, enqueued_ago_s: float = 0.0, **fields: Any) -> uuid.UUID:
    job = Job(clinic_id=clinic_id, kind=kind, params=params,
              enqueued_at=utcnow() - timedelta(seconds=enqueued_ago_s), **fields)
    session.add(job)
    session.flush()
    return job.id


def wait_job(factory: sessionmaker[Session], job_id: uuid.UUID, timeout: float = 60.0,
             until: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                             JobStatus.CANCELLED)) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.status in until:
                return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s "
                                 f"(error={job.error})")
        time.sleep(0.2)


def submit_job(client: TestClient, path: str, body: dict[str, Any]) -> str:
    """POST a job through the API; its id (the request must be accepted)."""
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_succeeded(client: TestClient, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """Poll the job's status until it ends; it must have succeeded."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    return dict(job)
