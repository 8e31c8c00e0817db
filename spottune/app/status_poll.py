"""The job status poll, ``GET /v1/jobs/{id}``, answered in front of the middleware stack.

Clinics poll a job every second or so for hours: it is the API's most frequent request by far.
Through the stack, a poll passed eight ASGI layers (Starlette's error and exception middlewares,
FastAPI's body limit and exit stack, and ours: timing, rate limit, auth gate, body limit,
conditional GET), each wrapping ``send`` or rebuilding the headers, then FastAPI's routing, its
parameter validation and a ``Response`` object: together they cost the API more CPU than the
poll's own read. A poll needs none of that machinery, only what the layers do for it, and
:class:`StatusPoll` does exactly that in one place:

- ``Server-Timing: app;dur=<ms>``, as :class:`~spottune.app.timing.ServerTimingMiddleware`;
- the per-key rate limit, with the same buckets as
  :class:`~spottune.app.ratelimit.RateLimitMiddleware` (one shared limiter);
- the key and the job read by :class:`~spottune.app.services.job_status.StatusReader`, as the
  route ``get_job`` does;
- ETag and ``If-None-Match`` (304), as :class:`~spottune.app.conditional.ConditionalGetMiddleware`;
- failures answered by the app's own exception handlers (401, 404, 503 ...).

The auth gate and the body limits only act on requests with a body, and a poll has none. Any
request that is not plainly a poll goes the usual way, to the route ``get_job``, which stays
(and documents the poll in the OpenAPI schema): one with a body, an id not spelled as a
canonical UUID (FastAPI answers 422 for a malformed one), or a root path. A middleware added to
the app must also be added here if polls need it.
"""

from __future__ import annotations

import inspect
import time
import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from spottune.app.conditional import etag_matches
from spottune.app.ratelimit import RateLimiter, client_key
from spottune.app.security import presented_key
from spottune.app.services.job_status import StatusReader
from spottune.app.timing import server_timing, timed

PATH_PREFIX = "/v1/jobs/"
_PATH_LENGTH = len(PATH_PREFIX) + 36  # a canonical UUID: 8-4-4-4-12 hex digits
_HYPHENS = (8, 13, 18, 23)
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

Poll = tuple[uuid.UUID, bytes | None, bytes | None]
"""A poll this answers: the job id, and the Authorization and If-None-Match headers."""


class StatusPoll:
    """Answers ``GET /v1/jobs/{id}`` as the route and the middleware stack would."""

    def __init__(self, app: FastAPI, reader: StatusReader, limiter: RateLimiter | None) -> None:
        self.app = app  # for its exception handlers
        self.reader = reader
        self.limiter = limiter

    def match(self, scope: Scope) -> Poll | None:
        """The poll that the HTTP request ``scope`` is, or None to send it the usual way."""
        path: str = scope["path"]
        if (
            len(path) != _PATH_LENGTH
            or scope["method"] != "GET"
            or not path.startswith(PATH_PREFIX)
            or scope.get("root_path")
        ):
            return None
        text = path[len(PATH_PREFIX) :]
        if any(text[i] != "-" for i in _HYPHENS):
            return None
        try:
            job_id = uuid.UUID(text)
        except ValueError:
            return None
        if str(job_id) != text.lower():  # uuid.UUID also takes "_", "+" and spaces in places
            return None
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:  # the route and the limiter differ on which one
                    return None
                authorization = value
            elif name == b"if-none-match":
                if if_none_match is None:  # the first, as Starlette's Headers.get
                    if_none_match = value
            elif name in _BODY_HEADERS and value != b"0":
                return None
        return job_id, authorization, if_none_match

    async def __call__(self, scope: Scope, receive: Receive, send: Send, poll: Poll) -> None:
        start = time.perf_counter()
        job_id, authorization, if_none_match = poll
        try:
            if self.limiter is not None:
                refusal = self.limiter.refusal(client_key(authorization, scope.get("client")))
                if refusal is not None:
                    await refusal(scope, receive, timed(send, start))
                    return
            scheme, _, credentials = (
                authorization.decode("latin-1") if authorization else ""
            ).partition(" ")
            key = presented_key(scheme or None, credentials or None)
            found = await self.reader.read(key, job_id)
        except Exception as exc:
            await self._failed(scope, receive, send, start, exc)
            return
        if etag_matches(if_none_match.decode("latin-1") if if_none_match else None, found.etag):
            await send({
                "type": "http.response.start",
                "status": 304,
                "headers": [found.headers[0], server_timing(start)],  # the ETag alone
            })
            await send({"type": "http.response.body", "body": b""})
            return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [*found.headers, server_timing(start)],
        })
        await send({"type": "http.response.body", "body": found.body})

    async def _failed(
        self, scope: Scope, receive: Receive, send: Send, start: float, exc: Exception
    ) -> None:
        """Answer ``exc`` with the app's handler for it, as Starlette would: an unexpected one
        (the handler of ``Exception``: 500) without Server-Timing, and raised again for the
        server to log."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if (handler := handlers.get(cls)) is not None:
                break
        else:
            raise exc
        response = handler(Request(scope, receive), exc)
        if inspect.isawaitable(response):
            response = await response
        if cls is Exception:  # Starlette's ServerErrorMiddleware, outside the timing middleware
            await response(scope, receive, send)
            raise exc
        await response(scope, receive, timed(send, start))

