"""Storing a job's results: model, masks, policy, report and metrics in ONE transaction.

Idempotent: the job row is locked, ownership re-checked, and results already stored for the job
(a redelivered message, a retried commit) are reused instead of written twice. The unique
constraints on ``models.job_id`` and ``masks(job_id, scan_id)`` back this up.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from spottune.contract import JobStatus, PolicyRecord, ScanScore
from spottune.core import job_state
from spottune.core.blobs import write_blob
from spottune.core.formats import NIFTI_GZ, SAFETENSORS
from spottune.core.models import Job, Mask, Metric, Model, Policy, Report
from spottune.ml.loop import Cancelled


@dataclass
class NewModel:
    """A model the job trained (weights are safetensors bytes with the config in metadata)."""

    name: str
    config: dict[str, Any]
    weights: bytes
    method: str | None
    parent_model_id: uuid.UUID | None


@dataclass
class JobOutput:
    """Everything a job produced, in memory until :func:`store` writes it at once."""

    model: NewModel | None = None
    masks_model_id: uuid.UUID | None = None  # an existing model that made the masks (segmentation)
    masks: dict[uuid.UUID, bytes] = field(default_factory=dict)  # scan id -> .nii.gz bytes
    policy: PolicyRecord | None = None
    report_html: str | None = None
    report_png: bytes | None = None
    metrics: list[ScanScore] = field(default_factory=list)


def _lock_uncancelled(session: Session, job_id: uuid.UUID, attempt: int) -> Job:
    session.expire(session.get(Job, job_id))  # re-read: a cancel may have come in meanwhile
    job = job_state.lock_owned(session, job_id, attempt)
    if job.cancel_requested:
        raise Cancelled("cancel requested before results were stored")
    return job


def store(session: Session, job_id: uuid.UUID, attempt: int, output: JobOutput) -> str:
    """Write ``output`` and mark the job succeeded; the caller's transaction commits it all.

    Writing large outputs takes a while, and a clinic's cancel must not wait for it: the job
    row is locked only at the end, to re-check ownership and cancel and mark it succeeded. A
    cancel that came in meanwhile wins: Cancelled is raised and everything written rolls back.
    """
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING or job.attempts != attempt:
        raise job_state.JobLost(str(job_id))
    done = job_state.existing_result(session, job_id)
    if done is not None:
        job_state.mark_succeeded(_lock_uncancelled(session, job_id, attempt), done)
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
    mask_ids: list[uuid.UUID] = []
    for scan_id, data in output.masks.items():
        blob = write_blob(session, clinic_id, data, NIFTI_GZ)
        mask = Mask(id=uuid.uuid4(), clinic_id=clinic_id, job_id=job_id, scan_id=scan_id,
                    model_id=model_id, blob_id=blob.id)
        session.add(mask)
        mask_ids.append(mask.id)
    if output.policy is not None:
        session.add(Policy(job_id=job_id, data=output.policy.to_dict()))
    if output.report_html is not None:
        html = write_blob(session, clinic_id, output.report_html.encode(), "text/html")
        png = (write_blob(session, clinic_id, output.report_png, "image/png")
               if output.report_png is not None else None)
        session.add(Report(job_id=job_id, html_blob_id=html.id,
                           png_blob_id=None if png is None else png.id))
    for m in output.metrics:
        session.add(Metric(job_id=job_id, scan_id=m.scan_id, phase=m.phase, dice=m.dice,
                           sdice=m.sdice, hd95=m.hd95))
    session.flush()
    job = _lock_uncancelled(session, job_id, attempt)
    job_state.mark_succeeded(job, job_state.result_of(model_id, mask_ids, output.metrics))
    session.flush()
    return "succeeded"
