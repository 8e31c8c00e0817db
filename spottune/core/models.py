"""ORM tables shared by the API and the workers (schema created only by Alembic migrations)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from spottune.contract import JobKind, JobStatus
from spottune.core.db import Base

CHUNK_BYTES = 1024 * 1024  # blob chunk size (1 MiB)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _str_enum(cls: type[enum.Enum], name: str) -> Enum:
    # VARCHAR holding the lower-case values (no native Postgres enum: simpler migrations).
    return Enum(
        cls, name=name, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
    )


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=utcnow, nullable=False)


def _clinic_fk() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("clinics.id", ondelete="CASCADE"), index=True, nullable=False)


class Clinic(Base):
    __tablename__ = "clinics"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    prefix: Mapped[str] = mapped_column(String(12), index=True, nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 hex of the key
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Blob(Base):
    __tablename__ = "blobs"
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)  # bytes
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content_type: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = _created()
    # The job whose result this blob is part of while a worker writes that result (see
    # core.blobs.stage_blob); None once the result is committed, and for every other blob.
    staged_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True, nullable=True)


class BlobChunk(Base):
    __tablename__ = "blob_chunks"
    blob_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Job(Base):
    __tablename__ = "jobs"
    # fair share: when did each clinic last start a job (spottune.app.fairshare)
    __table_args__ = (Index("ix_jobs_clinic_started", "clinic_id", "started_at"),)
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    kind: Mapped[JobKind] = mapped_column(_str_enum(JobKind, "job_kind"), nullable=False)
    status: Mapped[JobStatus] = mapped_column(
        _str_enum(JobStatus, "job_status"), index=True, nullable=False, default=JobStatus.QUEUED
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    progress_step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    weights_blob_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("blobs.id"), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    parent_model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True, nullable=True
    )
    method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = _created()


class Scan(Base):
    __tablename__ = "scans"
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    site: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    image_blob_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("blobs.id"), nullable=False)
    mask_blob_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("blobs.id"), nullable=True)
    annotated_slices: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    shape: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    spacing: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    orientation: Mapped[str] = mapped_column(String(8), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _created()


class Mask(Base):
    __tablename__ = "masks"
    __table_args__ = (UniqueConstraint("job_id", "scan_id", name="uq_masks_job_scan"),)
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False
    )
    scan_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("scans.id", ondelete="CASCADE"), index=True, nullable=False
    )
    # Nullable so a model can be deleted while the masks it produced stay downloadable.
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True
    )
    blob_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("blobs.id"), nullable=False)
    created_at: Mapped[datetime] = _created()


class Policy(Base):
    __tablename__ = "policies"
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # PolicyRecord.to_dict()


class Report(Base):
    __tablename__ = "reports"
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    html_blob_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("blobs.id"), nullable=False)
    png_blob_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("blobs.id"), nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "scan_id", "phase", name="uq_metrics_job_scan_phase"),
    )
    id: Mapped[uuid.UUID] = _id()
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False
    )
    scan_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("scans.id", ondelete="CASCADE"), nullable=False
    )
    phase: Mapped[str] = mapped_column(String(8), nullable=False)  # "before" | "after"
    dice: Mapped[float] = mapped_column(Float, nullable=False)
    sdice: Mapped[float] = mapped_column(Float, nullable=False)
    hd95: Mapped[float | None] = mapped_column(Float, nullable=True)


class ScanDicom(Base):
    """The DICOM identity of a scan uploaded as a series: what a DICOM SEG on it must reference.

    ``headers_blob_id`` holds the series' datasets without pixel data, as DICOM JSON, in the
    order of the scan's slices (the stored image is the series' volume as NIfTI).
    """

    __tablename__ = "scan_dicom"
    scan_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True
    )
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    frame_of_reference_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    n_frames: Mapped[int] = mapped_column(Integer, nullable=False)
    headers_blob_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("blobs.id"), nullable=False)


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``: what the first request with it created, for replays."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("clinic_id", "key", name="uq_idempotency_clinic_key"),)
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)  # method, path, body
    resource: Mapped[str] = mapped_column(String(32), nullable=False)  # "scans", "jobs", ...
    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _created()


class Webhook(Base):
    """A clinic's URL that receives a signed POST when one of its jobs reaches a terminal state."""

    __tablename__ = "webhooks"
    id: Mapped[uuid.UUID] = _id()
    clinic_id: Mapped[uuid.UUID] = _clinic_fk()
    url: Mapped[str] = mapped_column(String(2000), nullable=False)
    # Kept in clear: the worker needs it to sign each delivery (HMAC-SHA256).
    secret: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = _created()


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the last attempt


class WebhookDelivery(Base):
    """One job's terminal state sent to one webhook (retried with backoff until delivered)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("webhook_id", "job_id", name="uq_deliveries_hook_job"),)
    id: Mapped[uuid.UUID] = _id()
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True, nullable=False
    )
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False
    )
    event: Mapped[str] = mapped_column(String(32), nullable=False)  # "job.succeeded", ...
    status: Mapped[DeliveryStatus] = mapped_column(
        _str_enum(DeliveryStatus, "delivery_status"), index=True, nullable=False
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
