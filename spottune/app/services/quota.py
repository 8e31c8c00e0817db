"""Per-clinic limits: stored bytes (413) and concurrent jobs (429)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from spottune.app.errors import TooLarge, TooManyJobs
from spottune.app.repositories import clinics as clinic_repo
from spottune.app.repositories import jobs as job_repo
from spottune.core.blobs import clinic_stored_bytes
from spottune.core.settings import Settings


def check_storage(
    session: Session, settings: Settings, clinic_id: uuid.UUID, incoming: int
) -> None:
    """Refuse an upload of ``incoming`` bytes that would exceed the clinic's storage quota."""
    clinic_repo.lock_clinic(session, clinic_id)
    used = clinic_stored_bytes(session, clinic_id)
    limit = settings.clinic_max_stored_bytes
    if used + incoming > limit:
        raise TooLarge(
            f"storage quota exceeded: the clinic stores {used} bytes, this upload adds {incoming}, "
            f"the limit is {limit}; delete scans or models you no longer need",
            code="storage_quota_exceeded",
        )


def check_concurrency(session: Session, settings: Settings, clinic_id: uuid.UUID) -> None:
    """Refuse a new job while the clinic already has its maximum of queued + running jobs."""
    clinic_repo.lock_clinic(session, clinic_id)
    active = job_repo.count_active(session, clinic_id)
    limit = settings.clinic_max_concurrent_jobs
    if active >= limit:
        raise TooManyJobs(
            f"the clinic already has {active} queued or running jobs (limit {limit}); "
            "wait for one to finish or cancel one, then retry",
            headers={"Retry-After": str(settings.job_retry_after_s)},
        )
