"""Webhook signatures, shared by the service that signs and the client that verifies.

Each delivery carries ``Spottune-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 with the webhook's secret over ``"<t>." + body`` (the raw request body bytes).
A receiver recomputes it, compares in constant time and refuses old timestamps (replays).
Standard library only: the client imports this without the service's dependencies.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Spottune-Signature"
EVENT_HEADER = "Spottune-Event"
DELIVERY_HEADER = "Spottune-Delivery"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match the body."""


def compute(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` with ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Spottune-Signature`` header value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={compute(secret, ts, body)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body``: its timestamp, or :class:`SignatureError`."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: no t=<unix seconds>") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp is more than {tolerance_s:.0f} s away")
    expected = compute(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("signature does not match the body (wrong secret or altered body)")
    return timestamp
