"""Per-key request rate limit: a token bucket per API key, 429 with Retry-After beyond it.

One script polling in a tight loop must not take the API's threads and database connections
from every other clinic. Each key may send ``rate_limit_burst`` requests at once and
``rate_limit_per_minute`` on average; requests without a key are counted per client address.
Buckets live in this API process (several API processes each allow the rate), checked before
authentication so that a flood never reaches the database. One :class:`RateLimiter` serves the
middleware and the job status poll's fast path (:mod:`spottune.app.status_poll`): a key has one
bucket, whichever way its requests go.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from spottune.app.errors import error_response

MAX_BUCKETS = 10_000  # least recently used buckets beyond this are forgotten (they refill anyway)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by an opaque string; ``take`` returns 0 or the seconds to wait."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def refusal(self, client: str) -> Response | None:
        """None when ``client`` (:func:`client_key`) may go on, else the 429 to answer."""
        wait = self.take(client)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return error_response(
            429,
            "rate_limited",
            f"too many requests with this API key (at most {self.per_minute} a minute); "
            f"retry after {seconds} s",
            {"Retry-After": str(seconds)},
        )


def rate_limiter(per_minute: int, burst: int) -> RateLimiter | None:
    """The API's limiter; None when the limit is off (``per_minute`` 0)."""
    return RateLimiter(per_minute, burst) if per_minute > 0 else None


def client_key(authorization: bytes | None, client: tuple[str, int] | None) -> str:
    """The bucket of a request: its Authorization header's hash, else the client's address."""
    if authorization:  # never keep the key itself in memory longer than the request
        return "key:" + hashlib.sha256(authorization.strip()).hexdigest()
    return f"addr:{client[0] if client else 'unknown'}"


class RateLimitMiddleware:
    """429 ``rate_limited`` with ``Retry-After`` for /v1 requests beyond the key's rate."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter | None) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.limiter is not None
            and scope["type"] == "http"
            and str(scope["path"]).startswith("/v1/")
        ):
            authorization = dict(scope.get("headers") or []).get(b"authorization")
            response = self.limiter.refusal(client_key(authorization, scope.get("client")))
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
