"""Storing a job's results: model, masks, policy, report and metrics in ONE transaction.

Idempotent: the job row is locked, ownership re-checked, and results already stored for the job
(a redelivered message, a retried commit) are reused instead of written twice. The unique
constraints on ``models.job_id`` and ``masks(job_id, scan_id)`` back this up.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spottune.app.blobs import write_blob
from spottune.app.models import Job, JobStatus, Mask, Metric, Model, Policy, Report, utcnow
from spottune.ml.train import Cancelled

NIFTI_GZ = "application/gzip"
SAFETENSORS = "application/octet-stream"


class JobLost(Exception):
    """This worker no longer owns the job (re-claimed after a stale heartbeat, or finished)."""


@dataclass
class NewModel:
    """A model the job trained (weights are safetensors bytes with the config in metadata)."""

    name: str
    config: dict[str, Any]
    weights: bytes
    method: str | None
    parent_model_id: uuid.UUID | None


@dataclass
class ScanMetric:
    scan_id: uuid.UUID
    phase: str  # "before" (base model) | "after" (job's model)
    dice: float
    sdice: float
    hd95: float | None


@dataclass
class JobOutput:
    """Everything a job produced, in memory until :func:`store` writes it at once."""

    model: NewModel | None = None
    masks_model_id: uuid.UUID | None = None  # an existing model that made the masks (segmentation)
    masks: dict[uuid.UUID, bytes] = field(default_factory=dict)  # scan id -> .nii.gz bytes
    policy: dict[str, Any] | None = None
    report_html: str | None = None
    report_png: bytes | None = None
    metrics: list[ScanMetric] = field(default_factory=list)


def metrics_summary(metrics: list[ScanMetric]) -> dict[str, Any]:
    """Per-scan rows and the mean Dice / surface Dice per phase (what ``result.metrics`` holds)."""
    rows = [{"scan_id": str(m.scan_id), "phase": m.phase, "dice": m.dice, "sdice": m.sdice,
             "hd95": m.hd95} for m in metrics]
    mean: dict[str, dict[str, float]] = {}
    for phase in sorted({m.phase for m in metrics}):
        chosen = [m for m in metrics if m.phase == phase]
        mean[phase] = {"dice": fmean(m.dice for m in chosen),
                       "sdice": fmean(m.sdice for m in chosen)}
    return {"per_scan": rows, "mean": mean}


def existing_result(session: Session, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The result dict of results already stored for ``job_id``, or None if there are none."""
    model_id = session.scalars(select(Model.id).where(Model.job_id == job_id)).first()
    masks = list(session.scalars(
        select(Mask).where(Mask.job_id == job_id).order_by(Mask.created_at, Mask.id)))
    if model_id is None and not masks:
        return None
    if model_id is None:  # segmentation: the existing model that made the masks
        model_id = masks[0].model_id
    mask_ids = [m.id for m in masks]
    metrics = [ScanMetric(m.scan_id, m.phase, m.dice, m.sdice, m.hd95) for m in
               session.scalars(select(Metric).where(Metric.job_id == job_id))]
    return {"model_id": None if model_id is None else str(model_id),
            "mask_ids": [str(i) for i in mask_ids], "metrics": metrics_summary(metrics)}


def mark_succeeded(job: Job, result: dict[str, Any]) -> None:
    job.status = JobStatus.SUCCEEDED
    job.result = result
    job.error = None
    job.eta_seconds = None
    job.progress_step = max(job.progress_step, job.progress_total)
    job.finished_at = utcnow()


def _lock_owned(session: Session, job_id: uuid.UUID, attempt: int) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None or job.status != JobStatus.RUNNING or job.attempts != attempt:
        raise JobLost(str(job_id))
    if job.cancel_requested:
        raise Cancelled("cancel requested before results were stored")
    return job


def store(session: Session, job_id: uuid.UUID, attempt: int, output: JobOutput) -> str:
    """Write ``output`` and mark the job succeeded; the caller's transaction commits it all."""
    job = _lock_owned(session, job_id, attempt)
    done = existing_result(session, job_id)
    if done is not None:
        mark_succeeded(job, done)
        return "succeeded (results already stored)"
    clinic_id = job.clinic_id
    model_id = output.masks_model_id
    if output.model is not None:
        new = output.model
        blob = write_blob(session, clinic_id, new.weights, SAFETENSORS)
        model = Model(id=uuid.uuid4(), clinic_id=clinic_id, name=new.name, config=new.config,
                      weights_blob_id=blob.id, size_bytes=blob.size,
                      parent_model_id=new.parent_model_id, job_id=job_id, method=new.method)
        session.add(model)
        model_id = model.id
    mask_ids: list[str] = []
    for scan_id, data in output.masks.items():
        blob = write_blob(session, clinic_id, data, NIFTI_GZ)
        mask = Mask(id=uuid.uuid4(), clinic_id=clinic_id, job_id=job_id, scan_id=scan_id,
                    model_id=model_id, blob_id=blob.id)
        session.add(mask)
        mask_ids.append(str(mask.id))
    if output.policy is not None:
        session.add(Policy(job_id=job_id, data=output.policy))
    if output.report_html is not None:
        html = write_blob(session, clinic_id, output.report_html.encode(), "text/html")
        png = (write_blob(session, clinic_id, output.report_png, "image/png")
               if output.report_png is not None else None)
        session.add(Report(job_id=job_id, html_blob_id=html.id,
                           png_blob_id=None if png is None else png.id))
    for m in output.metrics:
        session.add(Metric(job_id=job_id, scan_id=m.scan_id, phase=m.phase, dice=m.dice,
                           sdice=m.sdice, hd95=m.hd95))
    mark_succeeded(job, {"model_id": None if model_id is None else str(model_id),
                         "mask_ids": mask_ids, "metrics": metrics_summary(output.metrics)})
    session.flush()
    return "succeeded"
