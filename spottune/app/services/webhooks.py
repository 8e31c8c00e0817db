"""Webhook registration: URL checks (no requests to private networks in production)."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from spottune.app.errors import Invalid, NotFound
from spottune.app.repositories import webhooks as repo
from spottune.app.schemas.webhooks import WebhookRequest
from spottune.core.models import Webhook
from spottune.core.settings import Settings

MAX_WEBHOOKS_PER_CLINIC = 20


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
