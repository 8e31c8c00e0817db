"""Model resources."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from spottune.app.schemas.common import OrmModel


class ModelOut(OrmModel):
    id: uuid.UUID
    name: str
    config: dict[str, Any]
    size_bytes: int
    sha256: str
    parent_model_id: uuid.UUID | None
    job_id: uuid.UUID | None
    method: str | None
    created_at: datetime
