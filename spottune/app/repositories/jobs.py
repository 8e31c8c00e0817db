"""Queries on jobs and what they produced (masks, policies, reports, metrics)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Row, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from spottune.contract import ACTIVE_STATUSES, JobKind, JobStatus
from spottune.core.job_view import JOB_FIELDS
from spottune.core.models import ApiKey, Job, Mask, Metric, Model, Policy, Report
from spottune.core.queries import get_owned, paginate

# Built once: a statement built per call costs more than its round trip (construction, cache
# key, and matching the cached compilation's result columns to the new statement's).
_KEYS_WITH_JOB = (
    select(ApiKey.key_hash, *(getattr(Job, name) for name in JOB_FIELDS))
    .select_from(ApiKey)
    .outerjoin(Job, and_(Job.clinic_id == ApiKey.clinic_id, Job.id == bindparam("job_id")))
    .where(ApiKey.prefix == bindparam("prefix"), ApiKey.revoked_at.is_(None))
)


def get(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    return get_owned(session, Job, clinic_id, job_id)


def keys_with_job(conn: Connection, prefix: str, job_id: uuid.UUID) -> list[Row[Any]]:
    """The active API keys sharing ``prefix``, each with the job ``job_id`` if it belongs to the
    key's clinic (``id`` is None otherwise): authentication and the job in one statement.

    Each row has ``key_hash`` and the job's fields of :data:`JOB_FIELDS` as attributes.
    """
    return list(conn.execute(_KEYS_WITH_JOB, {"prefix": prefix, "job_id": job_id}))


def keys_with_job_sql(dialect: Dialect) -> str:
    """The statement of :func:`keys_with_job` as ``dialect``'s driver takes it, with the
    parameters ``prefix`` and ``job_id``: for reading through the driver's own cursor (see
    :mod:`spottune.app.services.job_status`). Its rows are plain tuples in the same order."""
    return str(_KEYS_WITH_JOB.compile(dialect=dialect))


def get_for_update(session: Session, clinic_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    stmt = select(Job).where(Job.id == job_id, Job.clinic_id == clinic_id).with_for_update()
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def page(
    session: Session,
    clinic_id: uuid.UUID,
    limit: int,
    offset: int,
    *,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    model_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
) -> tuple[list[Job], int]:
    stmt = select(Job).where(Job.clinic_id == clinic_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if model_id is not None:  # the job used the model, or produced it
        produced = select(Model.job_id).where(Model.id == model_id, Model.clinic_id == clinic_id)
        stmt = stmt.where(
            or_(Job.params["model_id"].as_string() == str(model_id), Job.id.in_(produced))
        )
    if created_after is not None:
        stmt = stmt.where(Job.created_at > created_after)
    return paginate(session, stmt.order_by(Job.created_at.desc(), Job.id), limit, offset)


def count_active(session: Session, clinic_id: uuid.UUID) -> int:
    stmt = select(func.count()).where(Job.clinic_id == clinic_id, Job.status.in_(ACTIVE_STATUSES))
    return int(session.scalar(stmt) or 0)


def active_jobs(session: Session, clinic_id: uuid.UUID) -> list[Job]:
    """Queued and running jobs (few: bounded by the per-clinic concurrency limit)."""
    stmt = select(Job).where(Job.clinic_id == clinic_id, Job.status.in_(ACTIVE_STATUSES))
    return list(session.scalars(stmt))


def masks_page(
    session: Session, job_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[Mask], int]:
    stmt = select(Mask).where(Mask.job_id == job_id).order_by(Mask.created_at, Mask.id)
    return paginate(session, stmt, limit, offset)


def mask(session: Session, clinic_id: uuid.UUID, mask_id: uuid.UUID) -> Mask | None:
    return get_owned(session, Mask, clinic_id, mask_id)


def policy(session: Session, job_id: uuid.UUID) -> Policy | None:
    return session.get(Policy, job_id)


def report(session: Session, job_id: uuid.UUID) -> Report | None:
    return session.get(Report, job_id)


def metrics(session: Session, job_id: uuid.UUID) -> list[Metric]:
    stmt = select(Metric).where(Metric.job_id == job_id).order_by(Metric.scan_id, Metric.phase)
    return list(session.scalars(stmt))
