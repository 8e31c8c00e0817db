"""Scan resources."""

from __future__ import annotations

import uuid
from datetime import datetime

from spottune.app.schemas.common import OrmModel


class DicomOut(OrmModel):
    """The source series of a scan uploaded as DICOM (masks can be downloaded as DICOM SEG)."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    n_frames: int


class ScanOut(OrmModel):
    id: uuid.UUID
    site: str | None
    subject: str | None
    shape: list[int]
    spacing: list[float]
    orientation: str
    sha256: str
    size_bytes: int
    has_mask: bool
    annotated_slices: list[int] | None
    created_at: datetime
    dicom: DicomOut | None = None
