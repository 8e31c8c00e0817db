"""Seeding through the real API, waiting for jobs, and the storage invariants faults must keep."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import httpx
import nibabel as nib
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

SHAPE = (32, 32, 16)  # voxels, 1 mm
TINY_CONFIG = {
    "width": 4,
    "depth": 2,
    "blocks_per_stage": 1,
    "preprocessing": {"spacing_mm": [1.0, 1.0]},
}
TERMINAL = ("succeeded", "failed", "cancelled")


def nifti_gz(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), compresslevel=1)


def upload_model(http: httpx.Client) -> str:
    from spottune.ml.checkpoint import weights_to_bytes
    from spottune.ml.config import ModelConfig
    from spottune.ml.factory import build_model

    config = ModelConfig.model_validate(TINY_CONFIG)
    weights = weights_to_bytes(build_model(config), config)
    r = http.post(
        "/v1/models",
        data={"config": json.dumps(TINY_CONFIG)},
        files={"weights": ("w.safetensors", weights)},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def upload_scans(http: httpx.Client, n: int, seed: int = 0) -> list[str]:
    from spottune.ml.synthetic import make_phantom

    ids = []
    for i in range(n):
        image, mask = make_phantom(SHAPE, seed=seed + i, site="b")
        r = http.post(
            "/v1/scans",
            files={"image": ("i.nii.gz", nifti_gz(image)), "mask": ("m.nii.gz", nifti_gz(mask))},
        )
        assert r.status_code == 201, r.text
        ids.append(str(r.json()["id"]))
    return ids


def adaptation(
    http: httpx.Client, model: str, train: list[str], target: list[str], iterations: int
) -> str:
    r = http.post(
        "/v1/adaptations",
        json={
            "model_id": model,
            "train_scan_ids": train,
            "target_scan_ids": target,
            "options": {"iterations": iterations, "batch_size": 4},
        },
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def segmentation(http: httpx.Client, model: str, scans: list[str]) -> str:
    r = http.post("/v1/segmentations", json={"model_id": model, "scan_ids": scans})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def job_row(factory: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    with factory() as session:
        row = (
            session.execute(
                text(
                    "SELECT status, attempts, progress_step, error, result, heartbeat_at "
                    "FROM jobs WHERE id = :id"
                ),
                {"id": job_id},
            )
            .mappings()
            .one()
        )
        return dict(row)


def wait_job(
    factory: sessionmaker[Session],
    job_id: str,
    until: tuple[str, ...] = TERMINAL,
    timeout: float = 90,
    min_step: int = 0,
) -> dict[str, Any]:
    """Poll the database until the job's status is in ``until`` (and progress >= min_step)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = job_row(factory, job_id)
            status = str(job["status"]).lower()
            if status in until and job["progress_step"] >= min_step:
                return {**job, "status": status}
            if status in TERMINAL and status not in until:
                raise AssertionError(f"job {job_id} ended {status}: {job['error']}")
        except AssertionError:
            raise
        except Exception:  # the database may be restarting
            job = {"status": "unknown"}
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job} after {timeout} s")
        time.sleep(0.25)


def outputs(factory: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    """What the job stored: adapted models, masks per scan, policy and report rows."""
    with factory() as session:
        q = {"id": job_id}
        models = session.execute(text("SELECT id FROM models WHERE job_id = :id"), q).all()
        per_scan = session.execute(
            text("SELECT scan_id, count(*) FROM masks WHERE job_id = :id GROUP BY scan_id"), q
        ).all()
        extra = {
            table: session.scalar(text(f"SELECT count(*) FROM {table} WHERE job_id = :id"), q)
            for table in ("policies", "reports", "metrics")
        }
    return {
        "models": [str(m[0]) for m in models],
        "masks": {str(s): int(n) for s, n in per_scan},
        **extra,
    }


INVARIANTS = {
    "orphan blobs": """
        SELECT count(*) FROM blobs b WHERE NOT EXISTS (
          SELECT 1 FROM scans s WHERE b.id IN (s.image_blob_id, s.mask_blob_id)
          UNION ALL SELECT 1 FROM models m WHERE m.weights_blob_id = b.id
          UNION ALL SELECT 1 FROM masks k WHERE k.blob_id = b.id
          UNION ALL SELECT 1 FROM reports r WHERE b.id IN (r.html_blob_id, r.png_blob_id))""",
    "blobs whose chunks do not add up": """
        SELECT count(*) FROM blobs b WHERE b.size <> (
          SELECT coalesce(sum(length(c.data)), 0) FROM blob_chunks c WHERE c.blob_id = b.id)""",
    "succeeded jobs without result": """
        SELECT count(*) FROM jobs WHERE lower(status::text) = 'succeeded' AND result IS NULL""",
    "failed or cancelled jobs with outputs": """
        SELECT count(*) FROM jobs j WHERE lower(j.status::text) IN ('failed', 'cancelled') AND (
          EXISTS (SELECT 1 FROM models m WHERE m.job_id = j.id)
          OR EXISTS (SELECT 1 FROM masks k WHERE k.job_id = j.id))""",
}


def broken_invariants(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        found = {name: int(session.scalar(text(sql)) or 0) for name, sql in INVARIANTS.items()}
    return {name: n for name, n in found.items() if n}


def table_counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            t: int(session.scalar(text(f"SELECT count(*) FROM {t}")) or 0)
            for t in ("scans", "models", "blobs", "blob_chunks", "jobs", "masks")
        }


def corrupt_scan(factory: sessionmaker[Session], scan_id: str) -> None:
    """Overwrite the stored image of ``scan_id`` with garbage (storage corruption)."""
    junk = b"\x1f\x8b" + uuid.uuid4().bytes * 8
    blob = "(SELECT image_blob_id FROM scans WHERE id = :id)"
    with factory.begin() as session:
        session.execute(
            text(f"DELETE FROM blob_chunks WHERE blob_id = {blob} AND seq > 0"), {"id": scan_id}
        )
        session.execute(
            text(f"UPDATE blob_chunks SET data = :junk WHERE blob_id = {blob}"),
            {"junk": junk, "id": scan_id},
        )
        session.execute(
            text(f"UPDATE blobs SET size = :n WHERE id = {blob}"), {"n": len(junk), "id": scan_id}
        )
