"""Loading a job's inputs from the database: scans (with masks) and models of the job's clinic.

A scan or model of another clinic reads exactly like a missing one; either fails the job with
a reason that names the id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy.orm import Session
from torch import nn

from spottune.contract import ScanScore, ScorePhase
from spottune.core.blobs import read_blob
from spottune.core.formats import volume_suffix
from spottune.core.models import Blob, Model, Scan
from spottune.core.queries import get_owned
from spottune.ml.checkpoint import load_model
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.metrics import score_masks
from spottune.ml.preparation import PreparedVolume, prepare_volume
from spottune.ml.volumes import Volume, check_mask, volume_from_bytes


class InputError(ValueError):
    """A job input is missing or unusable (the message is what the clinic sees)."""


@dataclass
class ScanData:
    """A scan on its own grid: image, optional bool mask [X, Y, Z] and its annotated slices."""

    id: uuid.UUID
    volume: Volume
    mask: np.ndarray | None
    annotated_slices: list[int] | None
    site: str | None = None
    subject: str | None = None

    @property
    def label(self) -> str:
        """How reports name the scan: its subject, else the start of its id."""
        return self.subject or str(self.id)[:8]

    def prepared(self, prep: Preprocessing, *, with_mask: bool = True) -> PreparedVolume:
        """Slices for a model with preprocessing ``prep`` (mask and annotation when asked)."""
        if not with_mask or self.mask is None:
            return prepare_volume(self.volume, prep)
        return prepare_volume(self.volume, prep, self.mask, self.annotated_slices)


def _volume(session: Session, blob_id: uuid.UUID, name: str) -> Volume:
    """The stored volume; its format is the one the upload's suffix chose (kept as content type)."""
    blob = session.get(Blob, blob_id)
    data = read_blob(session, blob_id)
    suffix = volume_suffix(blob.content_type if blob is not None else None, data[:2])
    return volume_from_bytes(data, f"{name}{suffix}")


def load_scan(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID | str) -> ScanData:
    scan = get_owned(session, Scan, clinic_id, uuid.UUID(str(scan_id)))
    if scan is None:
        raise InputError(f"scan {scan_id} not found (deleted after the job was submitted?)")
    volume = _volume(session, scan.image_blob_id, "image")
    mask = None
    if scan.mask_blob_id is not None:
        raw = _volume(session, scan.mask_blob_id, "mask").data
        mask = check_mask(raw, volume, f"mask of scan {scan.id}")
    return ScanData(scan.id, volume, mask, scan.annotated_slices, scan.site, scan.subject)


def load_scans(session: Session, clinic_id: uuid.UUID,
               ids: Sequence[uuid.UUID | str]) -> list[ScanData]:
    return [load_scan(session, clinic_id, scan_id) for scan_id in ids]


def load_stored_model(session: Session, clinic_id: uuid.UUID, model_id: uuid.UUID | str,
                      device: torch.device) -> tuple[Model, nn.Module, ModelConfig]:
    """The stored row, the network in eval mode on ``device`` and its config."""
    row = get_owned(session, Model, clinic_id, uuid.UUID(str(model_id)))
    if row is None:
        raise InputError(f"model {model_id} not found (deleted after the job was submitted?)")
    network, config = load_model(read_blob(session, row.weights_blob_id), device=device)
    return row, network, config


def scan_metric(scan: ScanData, predicted: np.ndarray, phase: ScorePhase) -> ScanScore:
    """Dice, surface Dice (1 mm tolerance) and HD95 (mm) of ``predicted`` vs the scan's mask."""
    if scan.mask is None:
        raise InputError(f"scan {scan.id} has no mask to compare with")
    score = score_masks(predicted, scan.mask, scan.volume.spacing, tolerances_mm=(1.0,))
    hd95 = score.hd95 if predicted.any() and np.isfinite(score.hd95) else None
    return ScanScore(scan_id=scan.id, phase=phase, dice=score.dice,
                     sdice=score.surface_dice[1.0], hd95=hd95)
