"""Job requests (adaptation, segmentation, pretraining) and job, mask and policy resources."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spottune.app.models import JobKind, JobStatus
from spottune.app.schemas.common import OrmModel

MAX_SCANS_PER_JOB = 500
Method = Literal["spottune", "finetune-all", "finetune-first", "finetune-last", "none"]
Device = Literal["gpu", "cpu"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Device = Field(
        default="gpu", description="which workers run it: gpu (default) or cpu (its own queue)"
    )


class AdaptationRequest(_Request):
    model_id: uuid.UUID
    train_scan_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_SCANS_PER_JOB)
    target_scan_ids: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_SCANS_PER_JOB)
    method: Method = "spottune"
    options: dict[str, Any] = Field(default_factory=dict)


class SegmentationRequest(_Request):
    model_id: uuid.UUID
    scan_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_SCANS_PER_JOB)


class PretrainingRequest(_Request):
    train_scan_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_SCANS_PER_JOB)
    options: dict[str, Any] = Field(default_factory=dict)


class ProgressOut(BaseModel):
    step: int
    total: int
    loss: float | None
    eta_seconds: float | None


class JobOut(BaseModel):
    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    params: dict[str, Any]
    progress: ProgressOut
    attempts: int
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


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


class PolicyOut(BaseModel):
    job_id: uuid.UUID
    policy: dict[str, Any]
