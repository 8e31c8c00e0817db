"""Typed objects the client returns: the API's resources as pydantic models.

Unknown fields are ignored, so a newer server does not break an older client.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from spottune.contract import PolicyReport

if TYPE_CHECKING:
    from spottune.client.client import Client

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class Resource(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Scan(Resource):
    id: uuid.UUID
    site: str | None = None
    subject: str | None = None
    shape: list[int]
    spacing: list[float]
    orientation: str
    sha256: str
    size_bytes: int
    has_mask: bool
    annotated_slices: list[int] | None = None
    created_at: datetime


class Model(Resource):
    id: uuid.UUID
    name: str
    config: dict[str, Any]
    size_bytes: int
    sha256: str
    parent_model_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    method: str | None = None
    created_at: datetime


class Progress(Resource):
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_seconds: float | None = None


class Job(Resource):
    """A job; ``wait()`` follows it to its end (with a progress bar)."""

    id: uuid.UUID
    kind: str  # adaptation | segmentation | pretraining
    status: str  # queued | running | succeeded | failed | cancelled
    params: dict[str, Any] = {}
    progress: Progress = Progress()
    attempts: int = 0
    cancel_requested: bool = False
    error: str | None = None
    result: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    _client: Client | None = PrivateAttr(default=None)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def model_id(self) -> uuid.UUID | None:
        """The model the job trained (adaptation, pretraining) or used (segmentation)."""
        value = (self.result or {}).get("model_id")
        return None if value is None else uuid.UUID(str(value))

    @property
    def mask_ids(self) -> list[uuid.UUID]:
        return [uuid.UUID(str(m)) for m in (self.result or {}).get("mask_ids", [])]

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"per_scan": [...], "mean": {"before": {...}, "after": {...}}}`` where scored."""
        return dict((self.result or {}).get("metrics") or {})

    def wait(
        self, timeout: float | None = None, progress: bool = True, raise_on_failure: bool = True
    ) -> Job:
        """Poll until the job ends; see :meth:`spottune.client.Client.wait`."""
        if self._client is None:
            raise RuntimeError("this job is not bound to a client; use client.wait(job)")
        final = self._client.wait(
            self, timeout=timeout, progress=progress, raise_on_failure=raise_on_failure
        )
        for name in type(self).model_fields:
            setattr(self, name, getattr(final, name))
        return self


class Mask(Resource):
    id: uuid.UUID
    job_id: uuid.UUID
    scan_id: uuid.UUID
    model_id: uuid.UUID | None = None
    created_at: datetime


class Policy(PolicyReport):
    """The policy a SpotTUnet adaptation learned, as the API sends it: per gate and per stage how
    often the fine-tuned twin was chosen, the gates fine-tuned, lambda, method and policy kind."""

    model_config = ConfigDict(extra="ignore")

    job_id: uuid.UUID


class Webhook(Resource):
    id: uuid.UUID
    url: str
    description: str | None = None
    created_at: datetime


class Delivery(Resource):
    id: uuid.UUID
    webhook_id: uuid.UUID
    job_id: uuid.UUID
    event: str
    status: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: datetime
    response_status: int | None = None
    error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
