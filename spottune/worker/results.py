"""Storing a job's results: model, masks, policy, report and metrics, all or nothing.

The artefacts' bytes are *staged* first (:func:`spottune.core.blobs.stage_blob`: blobs marked as
staged for the job, written a few chunks per transaction), then one short transaction adds the
rows that make the blobs the job's result and marks the job succeeded - a compare-and-set on our
attempt and on no cancel having been requested. Until then no result is visible, and a cancel is
one short write that never waits behind the bytes (on SQLite the database has one write lock).
If the cancel wins, or the job is lost, the staged blobs are dropped; blobs a stopped worker left
staged are swept by the reconciler. The unique constraints on ``models.job_id`` and
``masks(job_id, scan_id)`` back up the compare-and-set.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from spottune.contract import JobStatus, PolicyRecord, ScanScore
from spottune.core import job_state
from spottune.core.blobs import discard_blobs, stage_blob, unstage
from spottune.core.db import session_scope
from spottune.core.formats import NIFTI_GZ, SAFETENSORS
from spottune.core.models import Blob, Job, Mask, Metric, Model, Policy, Report
from spottune.ml.loop import Cancelled

logger = logging.getLogger(__name__)


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
    """Everything a job produced, in memory until :func:`store` writes it."""

    model: NewModel | None = None
    masks_model_id: uuid.UUID | None = None  # an existing model that made the masks (segmentation)
    masks: dict[uuid.UUID, bytes] = field(default_factory=dict)  # scan id -> .nii.gz bytes
    policy: PolicyRecord | None = None
    report_html: str | None = None
    report_png: bytes | None = None
    metrics: list[ScanScore] = field(default_factory=list)


def _owned(session: Session, job_id: uuid.UUID, attempt: int) -> Job:
    """The job, if our attempt still runs it and no cancel was requested; raises otherwise."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING or job.attempts != attempt:
        raise job_state.JobLost(str(job_id))
    if job.cancel_requested:
        raise Cancelled("cancel requested before results were stored")
    return job


def _record(factory: sessionmaker[Session], job_id: uuid.UUID, attempt: int,
            result: dict[str, Any], rows: list[Any], staged: list[uuid.UUID]) -> None:
    """Add ``rows`` and mark the job succeeded in one transaction, if the job is still ours.

    The job row is updated last, so a cancel (an UPDATE of that row) waits for no more than the
    commit; the inserts before it only take key-share locks, which a cancel does not wait for.
    """
    with session_scope(factory) as session:
        for row in rows:  # in order: the tables have no relationships to sort inserts by
            session.add(row)
            session.flush()
        unstage(session, staged)
        if not job_state.succeed(session, job_id, attempt, result):
            _owned(session, job_id, attempt)  # raises Cancelled or JobLost: why it was refused
            raise job_state.JobLost(str(job_id))


def store(factory: sessionmaker[Session], job_id: uuid.UUID, attempt: int, output: JobOutput,
          check: Callable[[], None] | None = None) -> str:
    """Write ``output`` and mark the job succeeded (see the module docstring); commits itself.

    ``check`` is called while the bytes are written and may raise Cancelled or JobLost to stop
    early (the job's monitor noticed a cancel). Raises Cancelled if a cancel came first, JobLost
    if the job is no longer ours; either way nothing of ``output`` is left stored.
    """
    with session_scope(factory) as session:
        clinic_id = _owned(session, job_id, attempt).clinic_id
        done = job_state.existing_result(session, job_id)
    if done is not None:
        _record(factory, job_id, attempt, done, [], [])
        return "succeeded (results already stored)"
    staged: list[uuid.UUID] = []

    def stage(data: bytes, content_type: str) -> Blob:
        staged.append(uuid.uuid4())
        return stage_blob(factory, staged[-1], clinic_id, job_id, data, content_type, check)

    try:
        rows: list[Any] = []
        model_id = output.masks_model_id
        if output.model is not None:
            new = output.model
            blob = stage(new.weights, SAFETENSORS)
            model = Model(id=uuid.uuid4(), clinic_id=clinic_id, name=new.name, config=new.config,
                          weights_blob_id=blob.id, size_bytes=blob.size,
                          parent_model_id=new.parent_model_id, job_id=job_id, method=new.method)
            rows.append(model)
            model_id = model.id
        mask_ids: list[uuid.UUID] = []
        for scan_id, data in output.masks.items():
            mask = Mask(id=uuid.uuid4(), clinic_id=clinic_id, job_id=job_id, scan_id=scan_id,
                        model_id=model_id, blob_id=stage(data, NIFTI_GZ).id)
            rows.append(mask)
            mask_ids.append(mask.id)
        if output.policy is not None:
            rows.append(Policy(job_id=job_id, data=output.policy.to_dict()))
        if output.report_html is not None:
            html = stage(output.report_html.encode(), "text/html")
            png = (stage(output.report_png, "image/png")
                   if output.report_png is not None else None)
            rows.append(Report(job_id=job_id, html_blob_id=html.id,
                               png_blob_id=None if png is None else png.id))
        rows.extend(Metric(job_id=job_id, scan_id=m.scan_id, phase=m.phase, dice=m.dice,
                           sdice=m.sdice, hd95=m.hd95) for m in output.metrics)
        _record(factory, job_id, attempt,
                job_state.result_of(model_id, mask_ids, output.metrics), rows, staged)
    except BaseException:
        try:
            discard_blobs(factory, staged)
        except Exception:  # the database may be away: the reconciler sweeps them later
            logger.warning("job %s: staged result blobs left for the reconciler", job_id,
                           exc_info=True)
        raise
    return "succeeded"
