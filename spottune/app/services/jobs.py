"""Job creation (validated, quota-checked, enqueued after commit) and cancellation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from spottune.app.errors import Conflict, Invalid, NotFound
from spottune.app.models import Job, JobKind, JobStatus, Scan, utcnow
from spottune.app.repositories import jobs as job_repo
from spottune.app.repositories import scans as scan_repo
from spottune.app.schemas.jobs import AdaptationRequest, PretrainingRequest, SegmentationRequest
from spottune.app.services.models import get_model
from spottune.app.services.quota import check_concurrency
from spottune.app.settings import Settings
from spottune.app.tasks import enqueue_after_commit, queue_for

_RAS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def _options(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    from spottune.ml.config import format_validation_error

    try:
        return model.model_validate(raw).model_dump(mode="json")
    except ValidationError as exc:
        raise Invalid(
            f"options: {format_validation_error(model, exc)}", code="invalid_options"
        ) from None


def _scans(
    session: Session, clinic_id: uuid.UUID, ids: Sequence[uuid.UUID], field: str, need_mask: bool
) -> list[Scan]:
    unique = list(dict.fromkeys(ids))
    found = scan_repo.get_many(session, clinic_id, unique)
    missing = [str(i) for i in unique if i not in found]
    if missing:
        raise NotFound(f"{field}: scans {missing} not found; list your scans with GET /v1/scans")
    scans = [found[i] for i in unique]
    if need_mask:
        bare = [str(s.id) for s in scans if s.mask_blob_id is None]
        if bare:
            raise Invalid(
                f"{field}: scans {bare} have no mask; training scans need one "
                "(upload them again with a mask)",
                code="scan_without_mask",
            )
    return scans


def _check_slices(scans: Sequence[Scan], slice_axis: int, field: str) -> None:
    """Annotated slice indices must exist along the voxel axis the model slices along."""
    for scan in scans:
        if not scan.annotated_slices:
            continue
        axis = next(i for i, code in enumerate(scan.orientation) if _RAS_AXIS[code] == slice_axis)
        n = scan.shape[axis]
        bad = [i for i in scan.annotated_slices if i >= n]
        if bad:
            raise Invalid(
                f"{field}: scan {scan.id} has annotated slices {bad} outside 0..{n - 1} "
                f"along voxel axis {axis}, the model's slice axis",
                code="invalid_slices",
            )


def _submit(
    session: Session,
    settings: Settings,
    clinic_id: uuid.UUID,
    kind: JobKind,
    params: dict[str, Any],
) -> Job:
    check_concurrency(session, settings, clinic_id)
    now = utcnow()
    job = Job(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        kind=kind,
        status=JobStatus.QUEUED,
        params=params,
        progress_step=0,
        progress_total=0,
        attempts=0,
        cancel_requested=False,
        created_at=now,
        enqueued_at=now,
    )
    session.add(job)
    session.flush()
    enqueue_after_commit(session, job.id, settings, queue_for(params))
    return job


def create_adaptation(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: AdaptationRequest
) -> Job:
    from spottune.ml.train import AdaptOptions

    model = get_model(session, clinic_id, req.model_id)
    if not req.train_scan_ids and req.method != "none":
        raise Invalid("train_scan_ids: give at least one annotated scan", code="invalid_request")
    train = _scans(session, clinic_id, req.train_scan_ids, "train_scan_ids", need_mask=True)
    target = _scans(session, clinic_id, req.target_scan_ids, "target_scan_ids", need_mask=False)
    slice_axis = int(model.config.get("preprocessing", {}).get("slice_axis", 2))
    _check_slices(train, slice_axis, "train_scan_ids")
    params = {
        "model_id": str(model.id),
        "train_scan_ids": [str(s.id) for s in train],
        "target_scan_ids": [str(s.id) for s in target],
        "method": req.method,
        "options": _options(AdaptOptions, req.options),
        "device": req.device,
    }
    return _submit(session, settings, clinic_id, JobKind.ADAPTATION, params)


def create_segmentation(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: SegmentationRequest
) -> Job:
    model = get_model(session, clinic_id, req.model_id)
    scans = _scans(session, clinic_id, req.scan_ids, "scan_ids", need_mask=False)
    params = {
        "model_id": str(model.id),
        "scan_ids": [str(s.id) for s in scans],
        "device": req.device,
    }
    return _submit(session, settings, clinic_id, JobKind.SEGMENTATION, params)


def create_pretraining(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: PretrainingRequest
) -> Job:
    from spottune.ml.train import SourceOptions

    options = _options(SourceOptions, req.options)
    train = _scans(session, clinic_id, req.train_scan_ids, "train_scan_ids", need_mask=True)
    _check_slices(train, int(options.get("slice_axis", 2)), "train_scan_ids")
    params = {
        "train_scan_ids": [str(s.id) for s in train],
        "options": options,
        "device": req.device,
    }
    return _submit(session, settings, clinic_id, JobKind.PRETRAINING, params)


def get_job(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = job_repo.get(session, clinic_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    return job


def cancel_job(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Queued -> cancelled now; running -> cancel_requested (the worker stops); terminal -> 409."""
    job = job_repo.get_for_update(session, clinic_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    if job.status.terminal:
        raise Conflict(
            f"job {job_id} already {job.status.value}; nothing to cancel", code="job_finished"
        )
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.CANCELLED
        job.finished_at = utcnow()
        job.error = "cancelled by the clinic"
    job.cancel_requested = True
    session.flush()
    return job
