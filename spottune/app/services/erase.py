"""Erasing data: what a scan's deletion takes with it, deleting a job, purging a clinic.

Erase means erased: a deleted scan leaves no mask, metric or report picturing it, a deleted job
leaves none of its artefacts, a purged clinic leaves no row at all. What still lingers in the
database's files and in backups is described in docs/data-retention.md. Nothing here commits:
the request or command boundary does, so a failure leaves everything as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from statistics import fmean
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from spottune.app.errors import Conflict, NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.core.models import (
    ApiKey,
    Blob,
    BlobChunk,
    Clinic,
    IdempotencyKey,
    Job,
    Mask,
    Metric,
    Model,
    Policy,
    Report,
    Scan,
    ScanDicom,
    Webhook,
    WebhookDelivery,
)

SCAN_FIELDS = ("train_scan_ids", "target_scan_ids", "scan_ids", "validation_scan_ids")


def delete_blobs(session: Session, blob_ids: Iterable[uuid.UUID | None]) -> None:
    """Delete blobs and their chunks (chunks explicitly: SQLite may lack ON DELETE CASCADE)."""
    ids = [b for b in blob_ids if b is not None]
    if ids:
        session.execute(delete(BlobChunk).where(BlobChunk.blob_id.in_(ids)))
        session.execute(delete(Blob).where(Blob.id.in_(ids)))


def _scan_ids(params: dict[str, Any]) -> set[str]:
    found = {str(v) for f in SCAN_FIELDS for v in params.get(f) or []}
    options = params.get("options") or {}
    return found | {str(v) for v in options.get("validation_scan_ids") or []}


def jobs_using_scan(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> list[Job]:
    """The clinic's jobs whose inputs include the scan (ids live in the JSON params)."""
    key = str(scan_id)
    jobs = session.scalars(select(Job).where(Job.clinic_id == clinic_id))
    return [job for job in jobs if key in _scan_ids(job.params)]


def _delete_reports(session: Session, job_ids: list[uuid.UUID]) -> None:
    reports = list(session.scalars(select(Report).where(Report.job_id.in_(job_ids))))
    session.execute(delete(Report).where(Report.job_id.in_(job_ids)))
    delete_blobs(session, [b for r in reports for b in (r.html_blob_id, r.png_blob_id)])


def _scrub_result(job: Job, scan_id: uuid.UUID, removed_masks: set[str]) -> None:
    """Drop the scan's mask ids and per-scan metrics from the job's result (means recomputed)."""
    if not job.result:
        return
    result = dict(job.result)
    result["mask_ids"] = [m for m in result.get("mask_ids", []) if m not in removed_masks]
    metrics = dict(result.get("metrics") or {})
    rows = [r for r in metrics.get("per_scan", []) if r.get("scan_id") != str(scan_id)]
    mean = {
        phase: {
            "dice": fmean(r["dice"] for r in rows if r["phase"] == phase),
            "sdice": fmean(r["sdice"] for r in rows if r["phase"] == phase),
        }
        for phase in sorted({r["phase"] for r in rows})
    }
    if metrics:
        result["metrics"] = {**metrics, "per_scan": rows, "mean": mean}
    job.result = result


def erase_scan_derivatives(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> None:
    """Remove every mask, metric and report made from the scan (the scan row stays: the caller
    deletes it). Reports are whole documents picturing all their scans, so a report showing
    this scan goes entirely; the job's result then no longer names the scan's masks or metrics.
    """
    masks = list(session.scalars(select(Mask).where(Mask.scan_id == scan_id)))
    removed = {str(m.id) for m in masks}
    session.execute(delete(Mask).where(Mask.scan_id == scan_id))
    delete_blobs(session, [m.blob_id for m in masks])
    session.execute(delete(Metric).where(Metric.scan_id == scan_id))
    jobs = jobs_using_scan(session, clinic_id, scan_id)
    if jobs:
        _delete_reports(session, [j.id for j in jobs])
    for job in jobs:
        _scrub_result(job, scan_id, removed)
    session.flush()


def _check_model_unused(session: Session, clinic_id: uuid.UUID, model_id: uuid.UUID) -> None:
    for job in job_repo.active_jobs(session, clinic_id):
        if job.params.get("model_id") == str(model_id):
            raise Conflict(
                f"the job's model {model_id} is used by {job.status.value} job {job.id}; "
                "cancel that job or wait for it to finish",
                code="model_in_use",
            )


def delete_job(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Delete a finished job with everything it produced: masks, metrics, policy, report and
    the model it trained (409 while the job, or a job using that model, is queued or running)."""
    job = job_repo.get_for_update(session, clinic_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    if not job.status.terminal:
        raise Conflict(
            f"job {job_id} is {job.status.value}; cancel it (POST /v1/jobs/{job_id}/cancel) "
            "and wait until it is cancelled, then delete it",
            code="job_active",
        )
    models = list(session.scalars(select(Model).where(Model.job_id == job_id)))
    for model in models:
        _check_model_unused(session, clinic_id, model.id)
    masks = list(session.scalars(select(Mask).where(Mask.job_id == job_id)))
    session.execute(delete(Mask).where(Mask.job_id == job_id))
    delete_blobs(session, [m.blob_id for m in masks])
    session.execute(delete(Metric).where(Metric.job_id == job_id))
    session.execute(delete(Policy).where(Policy.job_id == job_id))
    _delete_reports(session, [job_id])
    _delete_models(session, [m.id for m in models])
    delete_blobs(session, [m.weights_blob_id for m in models])
    session.execute(delete(Job).where(Job.id == job_id))
    session.flush()


def _delete_models(session: Session, model_ids: list[uuid.UUID]) -> None:
    if not model_ids:
        return
    # Lineage and masks made with the model keep their rows; only the reference goes.
    session.execute(
        update(Model).where(Model.parent_model_id.in_(model_ids)).values(parent_model_id=None)
    )
    session.execute(update(Mask).where(Mask.model_id.in_(model_ids)).values(model_id=None))
    session.execute(delete(Model).where(Model.id.in_(model_ids)))


def purge_clinic(session: Session, clinic_id: uuid.UUID) -> dict[str, int]:
    """Delete the clinic and every row it owns; returns how many of each were deleted.

    Running jobs lose their rows: their worker finds the job gone at its next heartbeat and
    stops without writing anything.
    """
    if session.get(Clinic, clinic_id) is None:
        raise NotFound(f"clinic {clinic_id} not found")
    jobs = select(Job.id).where(Job.clinic_id == clinic_id).scalar_subquery()
    counts: dict[str, int] = {}

    def run(name: str, stmt: Any) -> None:
        counts[name] = int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]

    hooks = select(Webhook.id).where(Webhook.clinic_id == clinic_id).scalar_subquery()
    run("webhook_deliveries", delete(WebhookDelivery).where(
        or_(WebhookDelivery.webhook_id.in_(hooks), WebhookDelivery.job_id.in_(jobs))))
    run("webhooks", delete(Webhook).where(Webhook.clinic_id == clinic_id))
    run("metrics", delete(Metric).where(Metric.job_id.in_(jobs)))
    run("policies", delete(Policy).where(Policy.job_id.in_(jobs)))
    run("reports", delete(Report).where(Report.job_id.in_(jobs)))
    run("masks", delete(Mask).where(or_(Mask.clinic_id == clinic_id, Mask.job_id.in_(jobs))))
    session.execute(
        update(Model).where(Model.clinic_id == clinic_id).values(parent_model_id=None)
    )
    run("models", delete(Model).where(Model.clinic_id == clinic_id))
    scans = select(Scan.id).where(Scan.clinic_id == clinic_id).scalar_subquery()
    run("scan_dicom", delete(ScanDicom).where(ScanDicom.scan_id.in_(scans)))
    run("scans", delete(Scan).where(Scan.clinic_id == clinic_id))
    run("jobs", delete(Job).where(Job.clinic_id == clinic_id))
    blobs = select(Blob.id).where(Blob.clinic_id == clinic_id).scalar_subquery()
    run("blob_chunks", delete(BlobChunk).where(BlobChunk.blob_id.in_(blobs)))
    run("blobs", delete(Blob).where(Blob.clinic_id == clinic_id))
    run("api_keys", delete(ApiKey).where(ApiKey.clinic_id == clinic_id))
    run("idempotency_keys", delete(IdempotencyKey).where(IdempotencyKey.clinic_id == clinic_id))
    run("clinics", delete(Clinic).where(Clinic.id == clinic_id))
    session.flush()
    return counts
