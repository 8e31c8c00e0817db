"""Webhook registrations and their delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from spottune.app.schemas.common import OrmModel
from spottune.core.models import DeliveryStatus

MIN_SECRET_CHARS = 16


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="http(s) URL receiving events")
    secret: str = Field(
        min_length=MIN_SECRET_CHARS,
        max_length=200,
        description="shared secret: each delivery is signed with HMAC-SHA256 using it",
    )
    description: str | None = Field(default=None, max_length=200)


class WebhookOut(OrmModel):
    """A registered webhook (its secret is never shown again)."""

    id: uuid.UUID
    url: str
    description: str | None
    created_at: datetime


class DeliveryOut(OrmModel):
    id: uuid.UUID
    webhook_id: uuid.UUID
    job_id: uuid.UUID
    event: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    response_status: int | None
    error: str | None
    created_at: datetime
    delivered_at: datetime | None
