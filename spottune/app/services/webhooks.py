"""Webhook registration: URL checks (no requests to private networks in production)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from spottune.app.errors import Invalid, NotFound
from spottune.app.schemas.webhooks import WebhookRequest
from spottune.core import webhooks as repo
from spottune.core.models import Webhook
from spottune.core.settings import Settings
from spottune.core.webhooks import UnsafeAddress, check_destination

MAX_WEBHOOKS_PER_CLINIC = 20


def create_webhook(
    session: Session, settings: Settings, clinic_id: uuid.UUID, req: WebhookRequest
) -> Webhook:
    try:
        check_destination(req.url, settings.webhooks_may_reach_private_networks, resolve=False)
    except UnsafeAddress as exc:
        raise Invalid(f"url: {exc}", code="invalid_webhook_url") from None
    if repo.count(session, clinic_id) >= MAX_WEBHOOKS_PER_CLINIC:
        raise Invalid(
            f"at most {MAX_WEBHOOKS_PER_CLINIC} webhooks per clinic; delete one first",
            code="too_many_webhooks",
        )
    hook = Webhook(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        url=req.url,
        secret=req.secret,
        description=req.description,
    )
    session.add(hook)
    session.flush()
    return hook


def get_webhook(session: Session, clinic_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook:
    hook = repo.get(session, clinic_id, webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found; list yours with GET /v1/webhooks")
    return hook


def delete_webhook(session: Session, clinic_id: uuid.UUID, webhook_id: uuid.UUID) -> None:
    session.delete(get_webhook(session, clinic_id, webhook_id))
    session.flush()
