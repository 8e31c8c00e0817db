"""Typed job params (what a request asks, stored on the job) and job results.

The API validates a request into these models and stores ``model_dump(mode="json")`` as the
job's params; the worker reads them back with :func:`parse_params`. Ids are ids only: the worker
re-reads every scan and model from the database, owned by the job's clinic.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from spottune.contract.kinds import Device, JobKind, JobStatus, Method, ScorePhase
from spottune.contract.options import (
    AdaptationOptions,
    PretrainingOptions,
    SegmentationOptions,
    StrictModel,
)

MAX_SCANS_PER_JOB = 500

ScanIds = Annotated[list[uuid.UUID], Field(max_length=MAX_SCANS_PER_JOB)]
SomeScanIds = Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_SCANS_PER_JOB)]


class _JobParams(StrictModel):
    device: Device = Field(
        default="gpu", description="which workers run it: gpu (default) or cpu (its own queue)")


class AdaptationParams(_JobParams):
    """Adapt `model_id` on annotated scans; segment the target scans with the result."""

    model_id: uuid.UUID = Field(description="The source model (a plain U-Net) to adapt.")
    train_scan_ids: SomeScanIds = Field(
        description="Annotated scans of the new scanner to train on (each needs a mask).")
    target_scan_ids: ScanIds = Field(
        default_factory=list, description="Scans to segment with the adapted model.")
    validation_scan_ids: ScanIds = Field(
        default_factory=list,
        description="Annotated scans kept out of training, scored before and after adaptation "
                    "for the report.")
    method: Method = Field(default="spottune", description="Which blocks are fine-tuned.")
    options: AdaptationOptions = Field(default_factory=AdaptationOptions,
                                       description="Training options; all optional.")


class SegmentationParams(_JobParams):
    """Segment scans with a stored model (inference only)."""

    model_id: uuid.UUID = Field(description="The model that segments.")
    scan_ids: SomeScanIds = Field(description="Scans to segment, one mask each.")
    options: SegmentationOptions = Field(default_factory=SegmentationOptions,
                                         description="Inference options; all optional.")


class PretrainingParams(_JobParams):
    """Train a source model from scratch on annotated scans."""

    train_scan_ids: SomeScanIds = Field(
        description="Annotated scans to train on (each needs a mask).")
    options: PretrainingOptions = Field(default_factory=PretrainingOptions,
                                        description="Architecture and training options.")


JobParams = AdaptationParams | SegmentationParams | PretrainingParams
PARAMS_OF: dict[JobKind, type[JobParams]] = {
    JobKind.ADAPTATION: AdaptationParams,
    JobKind.SEGMENTATION: SegmentationParams,
    JobKind.PRETRAINING: PretrainingParams,
}


def parse_params(kind: JobKind, raw: object) -> JobParams:
    """The stored params of a job of `kind`, validated (raises pydantic's ValidationError)."""
    return PARAMS_OF[kind].model_validate(raw)


class ScanScore(BaseModel):
    """A mask scored against a scan's full reference mask."""

    scan_id: uuid.UUID
    phase: ScorePhase = Field(description="before: the base model; after: the job's model.")
    dice: float = Field(description="Volumetric Dice, 0..1.")
    sdice: float = Field(description="Surface Dice at 1 mm tolerance, 0..1.")
    hd95: float | None = Field(description="95th-percentile Hausdorff distance, mm; null when "
                                           "the predicted mask is empty.")


class PhaseMean(BaseModel):
    dice: float = Field(description="Mean Dice over the scored scans.")
    sdice: float = Field(description="Mean surface Dice over the scored scans.")


class MetricsSummary(BaseModel):
    per_scan: list[ScanScore] = Field(default_factory=list)
    mean: dict[ScorePhase, PhaseMean] = Field(default_factory=dict,
                                              description="Means per phase.")


class JobResult(BaseModel):
    """What a succeeded job produced."""

    model_id: uuid.UUID | None = Field(
        description="The trained model (adaptation, pretraining) or the one that segmented.")
    mask_ids: list[uuid.UUID] = Field(description="One mask per segmented scan.")
    metrics: MetricsSummary = Field(default_factory=MetricsSummary)



class ProgressOut(BaseModel):
    step: int
    total: int
    loss: float | None
    eta_seconds: float | None


class JobOut(BaseModel):
    """A job as GET /v1/jobs/{id} shows it (and webhooks deliver it)."""

    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    params: dict[str, Any]
    progress: ProgressOut
    attempts: int
    cancel_requested: bool
    error: str | None
    result: JobResult | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
