"""Webhooks shared by the API (registration) and the worker (delivery): queries on webhooks and
deliveries, and which destinations deliveries may reach."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from spottune.core.models import (
    DeliveryStatus,
    Job,
    JobStatus,
    Webhook,
    WebhookDelivery,
)
from spottune.core.queries import get_owned, paginate

TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def get(session: Session, clinic_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook | None:
    return get_owned(session, Webhook, clinic_id, webhook_id)


def page(
    session: Session, clinic_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[Webhook], int]:
    stmt = select(Webhook).where(Webhook.clinic_id == clinic_id)
    return paginate(session, stmt.order_by(Webhook.created_at, Webhook.id), limit, offset)


def count(session: Session, clinic_id: uuid.UUID) -> int:
    stmt = select(func.count()).where(Webhook.clinic_id == clinic_id)
    return int(session.scalar(stmt) or 0)


def deliveries_page(
    session: Session, webhook_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    order = (WebhookDelivery.created_at.desc(), WebhookDelivery.id)
    return paginate(session, stmt.order_by(*order), limit, offset)


def undelivered_terminal_jobs(
    session: Session, since: datetime, limit: int
) -> list[tuple[Webhook, Job]]:
    """(webhook, job) pairs: a job of the webhook's clinic that ended after it was registered
    (and after ``since``, which bounds the scan) and has no delivery row for it yet."""
    has_delivery = exists().where(
        WebhookDelivery.webhook_id == Webhook.id, WebhookDelivery.job_id == Job.id
    )
    stmt = (
        select(Webhook, Job)
        .join(Job, and_(Job.clinic_id == Webhook.clinic_id, Job.finished_at >= Webhook.created_at))
        .where(Job.status.in_(TERMINAL), Job.finished_at >= since, ~has_delivery)
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return [(hook, job) for hook, job in session.execute(stmt).tuples()]


def due_ids(session: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    stmt = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def claim(session: Session, delivery_id: uuid.UUID, now: datetime, lease_until: datetime) -> bool:
    """Take a due delivery for one attempt (several workers may run dispatchers)."""
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=lease_until)
        .returning(WebhookDelivery.id)
    )
    return session.execute(stmt).scalar_one_or_none() is not None


class UnsafeAddress(ValueError):
    """The URL's host is, or resolves to, an address webhooks must not reach."""


def _private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not address.is_global or address.is_multicast


def check_destination(url: str, allow_private: bool, resolve: bool = True) -> None:
    """Refuse URLs that are not http(s), or whose host is private when that is not allowed.

    ``resolve`` looks host names up (at delivery time: a name can change its address).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeAddress("give an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise UnsafeAddress("put no credentials in the URL; deliveries are signed instead")
    if allow_private:
        return
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            raise UnsafeAddress(f"{host} is a private address") from None
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise UnsafeAddress(f"{host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0])) for info in infos]
    bad = [str(a) for a in addresses if _private(a)]
    if bad:
        raise UnsafeAddress(f"{host} is a private address ({', '.join(bad)})")
