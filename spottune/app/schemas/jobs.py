"""Job requests (adaptation, segmentation, pretraining) and job, mask and policy resources.

Request bodies are the job contract's params models: the options a clinic may send, with their
defaults and bounds, are defined once in :mod:`spottune.contract` and shown in /openapi.json.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from spottune.app.schemas.common import OrmModel
from spottune.contract import (
    AdaptationParams,
    PolicyReport,
    PretrainingParams,
    SegmentationParams,
)


class AdaptationRequest(AdaptationParams):
    """Adapt a model to the clinic's scanner; `method` spottune by default."""


class SegmentationRequest(SegmentationParams):
    """Segment scans with a model (inference only)."""


class PretrainingRequest(PretrainingParams):
    """Train a source model from annotated scans."""


class MaskOut(OrmModel):
    id: uuid.UUID
    job_id: uuid.UUID
    scan_id: uuid.UUID
    model_id: uuid.UUID | None
    created_at: datetime


class MetricOut(OrmModel):
    scan_id: uuid.UUID
    phase: str
    dice: float
    sdice: float
    hd95: float | None


class PolicyOut(PolicyReport):
    """The policy a SpotTUnet adaptation learned: per gate, per stage, lambda and method."""

    job_id: uuid.UUID
