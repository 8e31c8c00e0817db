"""Job creation (validated, quota-checked, enqueued after commit) and cancellation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from spottune.app.errors import Conflict, Invalid, NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.repositories import scans as scan_repo
from spottune.app.services.models import get_model
from spottune.app.services.quota import check_concurrency
from spottune.app.tasks import enqueue_after_commit
from spottune.contract import AdaptationParams, PretrainingParams, SegmentationParams
from spottune.core import job_state
from spottune.core.broker import queue_for
from spottune.core.models import Job, JobKind, Scan
from spottune.core.settings import Settings
from spottune.ml.config import ConfigError, source_model_config

_RAS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


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
    job = job_state.create(session, clinic_id, kind, params)
    enqueue_after_commit(session, job.id, settings, queue_for(params))
    return job


def _ids(scans: Sequence[Scan]) -> list[uuid.UUID]:
    return [s.id for s in scans]


def create_adaptation(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: AdaptationParams
) -> Job:
    model = get_model(session, clinic_id, req.model_id)
    train = _scans(session, clinic_id, req.train_scan_ids, "train_scan_ids", need_mask=True)
    target = _scans(session, clinic_id, req.target_scan_ids, "target_scan_ids", need_mask=False)
    validation = _scans(session, clinic_id, req.validation_scan_ids, "validation_scan_ids",
                        need_mask=True)
    partial = [str(s.id) for s in validation if s.annotated_slices is not None]
    if partial:
        raise Invalid(
            f"validation_scan_ids: scan {partial[0]} is annotated on some slices only; validation "
            "scans are scored as whole volumes, so they need a full mask",
            code="invalid_request",
        )
    overlap = sorted(str(i) for i in set(_ids(train)) & set(_ids(validation)))
    if overlap:
        raise Invalid(
            f"validation_scan_ids: scans {overlap} are also in train_scan_ids; validation scans "
            "must be kept out of training",
            code="invalid_request",
        )
    slice_axis = int(model.config.get("preprocessing", {}).get("slice_axis", 2))
    _check_slices(train, slice_axis, "train_scan_ids")
    params = req.model_copy(update={
        "model_id": model.id, "train_scan_ids": _ids(train), "target_scan_ids": _ids(target),
        "validation_scan_ids": _ids(validation),
    })
    return _submit(session, settings, clinic_id, JobKind.ADAPTATION,
                   params.model_dump(mode="json"))


def create_segmentation(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: SegmentationParams
) -> Job:
    model = get_model(session, clinic_id, req.model_id)
    scans = _scans(session, clinic_id, req.scan_ids, "scan_ids", need_mask=False)
    params = req.model_copy(update={"model_id": model.id, "scan_ids": _ids(scans)})
    return _submit(session, settings, clinic_id, JobKind.SEGMENTATION,
                   params.model_dump(mode="json"))


def create_pretraining(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: PretrainingParams
) -> Job:
    try:
        source_model_config(req.options)
    except ConfigError as exc:  # e.g. width * 2**depth too large: refused before queueing
        raise Invalid(f"options: {exc}", code="invalid_options") from None
    train = _scans(session, clinic_id, req.train_scan_ids, "train_scan_ids", need_mask=True)
    _check_slices(train, req.options.slice_axis, "train_scan_ids")
    params = req.model_copy(update={"train_scan_ids": _ids(train)})
    return _submit(session, settings, clinic_id, JobKind.PRETRAINING,
                   params.model_dump(mode="json"))


def get_job(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = job_repo.get(session, clinic_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    return job


def cancel_job(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Queued -> cancelled now; running -> cancel_requested (the worker stops); terminal -> 409.

    No row lock is taken before the compare-and-set: it would wait for the foreign-key locks a
    worker recording the job's result holds.
    """
    job = job_repo.get(session, clinic_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found; list your jobs with GET /v1/jobs")
    if job.status.terminal or not job_state.request_cancel(session, job):
        raise Conflict(
            f"job {job_id} already {job.status.value}; nothing to cancel", code="job_finished"
        )
    return job
