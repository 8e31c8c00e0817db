"""Helpers for the API tests: clinics, tiny NIfTI volumes and weights, uploads, row counts."""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spottune.app import admin
from spottune.core.models import Blob, BlobChunk, Job, Model, Scan


@dataclass
class ClinicCtx:
    id: object
    key: str
    prefix: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_clinic(name: str, factory: sessionmaker[Session]) -> ClinicCtx:
    made = admin.create_clinic(name, session_factory=factory)
    return ClinicCtx(id=made.clinic_id, key=made.key, prefix=made.prefix)


def counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (Scan, Model, Blob, BlobChunk, Job)
        }


def phantom_bytes(
    shape: tuple[int, int, int] = (32, 32, 24), seed: int = 0, affine: np.ndarray | None = None
) -> tuple[bytes, bytes]:
    """(image .nii.gz bytes, mask .nii.gz bytes) of a tiny synthetic head."""
    from spottune.ml.synthetic import write_phantom

    with tempfile.TemporaryDirectory() as tmp:
        img, msk = Path(tmp) / "i.nii.gz", Path(tmp) / "m.nii.gz"
        write_phantom(img, msk, shape=shape, seed=seed, affine=affine)
        return img.read_bytes(), msk.read_bytes()


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None, gz: bool = True) -> bytes:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.nii.gz" if gz else "x.nii")
        nib.save(img, str(path))
        return path.read_bytes()


TINY_CONFIG = {"width": 4, "depth": 2, "blocks_per_stage": 1}


def tiny_weights(config: dict[str, object] | None = None) -> bytes:
    from spottune.ml.checkpoint import weights_to_bytes
    from spottune.ml.config import ModelConfig
    from spottune.ml.factory import build_model

    cfg = ModelConfig.model_validate(config or TINY_CONFIG)
    return weights_to_bytes(build_model(cfg), cfg)


def upload_model(
    client: TestClient, clinic: ClinicCtx, weights: bytes, config: dict[str, object] | None = None
) -> dict[str, Any]:
    r = client.post(
        "/v1/models",
        headers=clinic.headers,
        files={"weights": ("w.safetensors", io.BytesIO(weights))},
        data={"config": json.dumps(config or TINY_CONFIG), "name": "tiny"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def upload_scan(
    client: TestClient, clinic: ClinicCtx, image: bytes, mask: bytes | None = None, **form: str
) -> dict[str, Any]:
    files = {"image": ("scan.nii.gz", image)}
    if mask is not None:
        files["mask"] = ("mask.nii.gz", mask)
    r = client.post("/v1/scans", headers=clinic.headers, files=files, data=form)
    assert r.status_code == 201, r.text
    return dict(r.json())
