"""/v1/webhooks: register a URL for signed job events, list, delete, and the delivery log."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from spottune.app.api.deps import CurrentClinic, SessionDep, SettingsDep
from spottune.app.api.idempotency import IdempotencyDep, register_presenter
from spottune.app.schemas.common import (
    ERROR_RESPONSES,
    IDEMPOTENCY_RESPONSES,
    LimitQuery,
    OffsetQuery,
    Page,
)
from spottune.app.schemas.webhooks import DeliveryOut, WebhookOut, WebhookRequest
from spottune.app.services import webhooks as service
from spottune.core import webhooks as repo

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


def _present(session: Session, clinic_id: uuid.UUID, webhook_id: uuid.UUID) -> WebhookOut | None:
    hook = repo.get(session, clinic_id, webhook_id)
    return None if hook is None else WebhookOut.model_validate(hook)


register_presenter("webhooks", _present)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookOut,
    responses=IDEMPOTENCY_RESPONSES,
)
def create_webhook(
    body: WebhookRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
) -> WebhookOut:
    """Register a URL that receives a signed POST whenever one of the clinic's jobs ends.

    Each delivery is a JSON body ``{"event", "delivery_id", "webhook_id", "job"}`` with the
    headers ``Spottune-Event`` (``job.succeeded``, ``job.failed`` or ``job.cancelled``),
    ``Spottune-Delivery`` (the delivery id: the same on every retry) and ``Spottune-Signature:
    t=<unix seconds>,v1=<hex>``, the HMAC-SHA256 with the secret over ``"<t>." + body``.
    Any 2xx answer acknowledges it; anything else is retried with exponential backoff.
    """
    hook = service.create_webhook(session, settings, clinic.id, body)
    idempotency.record(session, "webhooks", hook.id, status.HTTP_201_CREATED)
    session.commit()
    response.headers["Location"] = f"/v1/webhooks/{hook.id}"
    return WebhookOut.model_validate(hook)


@router.get("", response_model=Page[WebhookOut])
def list_webhooks(
    session: SessionDep, clinic: CurrentClinic, limit: LimitQuery = 50, offset: OffsetQuery = 0
) -> Page[WebhookOut]:
    items, total = repo.page(session, clinic.id, limit, offset)
    return Page(
        items=[WebhookOut.model_validate(h) for h in items], total=total, limit=limit, offset=offset
    )


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> WebhookOut:
    return WebhookOut.model_validate(service.get_webhook(session, clinic.id, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> Response:
    """Stop sending events to this URL (its delivery log goes with it)."""
    service.delete_webhook(session, clinic.id, webhook_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    clinic: CurrentClinic,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> Page[DeliveryOut]:
    """Every event sent (or being retried) to this webhook, newest first."""
    hook = service.get_webhook(session, clinic.id, webhook_id)
    items, total = repo.deliveries_page(session, hook.id, limit, offset)
    deliveries = [DeliveryOut.model_validate(d) for d in items]
    return Page(items=deliveries, total=total, limit=limit, offset=offset)
