"""Queries on uploaded scans."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from spottune.core.models import Mask, Metric, Scan
from spottune.core.queries import get_owned, paginate


def get(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> Scan | None:
    return get_owned(session, Scan, clinic_id, scan_id)


def get_many(
    session: Session, clinic_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Scan]:
    """The clinic's scans among ``ids`` (missing or foreign ids are simply absent)."""
    if not ids:
        return {}
    stmt = select(Scan).where(Scan.clinic_id == clinic_id, Scan.id.in_(list(ids)))
    return {scan.id: scan for scan in session.scalars(stmt)}


def page(
    session: Session,
    clinic_id: uuid.UUID,
    limit: int,
    offset: int,
    *,
    site: str | None = None,
    annotated: bool | None = None,
) -> tuple[list[Scan], int]:
    stmt = select(Scan).where(Scan.clinic_id == clinic_id)
    if site is not None:
        stmt = stmt.where(Scan.site == site)
    if annotated is True:
        stmt = stmt.where(Scan.mask_blob_id.is_not(None))
    elif annotated is False:
        stmt = stmt.where(Scan.mask_blob_id.is_(None))
    return paginate(session, stmt.order_by(Scan.created_at.desc(), Scan.id), limit, offset)


def masks_of_scan(session: Session, scan_id: uuid.UUID) -> list[Mask]:
    return list(session.scalars(select(Mask).where(Mask.scan_id == scan_id)))


def metrics_of_scan(session: Session, scan_id: uuid.UUID) -> list[Metric]:
    return list(session.scalars(select(Metric).where(Metric.scan_id == scan_id)))
