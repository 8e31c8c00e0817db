"""Scan resources."""

from __future__ import annotations

import uuid
from datetime import datetime

from spottune.app.schemas.common import OrmModel


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
