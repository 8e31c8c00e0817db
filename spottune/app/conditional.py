"""``ETag`` / ``If-None-Match`` on GET: a client polling a job or re-downloading a file gets a
bodiless 304 when nothing changed.

JSON answers (job status, lists, policies) get an ETag computed from their body; downloads carry
the blob's sha256 as theirs (:mod:`spottune.app.api.downloads`), and ask
:func:`not_modified` first so an unchanged large file is not even read from the database. Job
status polls skip the middleware stack: :mod:`spottune.app.status_poll` answers their 304s with
:func:`etag_matches`.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_if_none_match: ContextVar[str | None] = ContextVar("if_none_match", default=None)
_CONDITIONAL = frozenset({"GET"})


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``etag`` against an If-None-Match header value."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def not_modified(etag: str) -> bool:
    """Whether the current request's If-None-Match already names ``etag``."""
    return etag_matches(_if_none_match.get(), etag)


def body_etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


class ConditionalGetMiddleware:
    """Adds an ETag to JSON answers of GET requests and turns matching ones into 304s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _CONDITIONAL:
            await self.app(scope, receive, send)
            return
        if_none_match = Headers(scope=scope).get("if-none-match")
        token = _if_none_match.set(if_none_match)
        start: Message | None = None
        mode = "pass"  # "pass" | "buffer" (JSON: ETag from the body) | "drop" (304 sent)
        chunks: list[bytes] = []

        async def conditional_send(message: Message) -> None:
            nonlocal start, mode
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                if message["status"] != 200:
                    await send(message)
                elif (etag := headers.get("etag")) is not None:
                    if etag_matches(if_none_match, etag):
                        mode = "drop"
                        await send(_not_modified_start(etag))
                    else:
                        await send(message)
                elif headers.get("content-type", "").startswith("application/json"):
                    mode, start = "buffer", message
                else:
                    await send(message)
                return
            if message["type"] != "http.response.body" or mode == "pass":
                await send(message)
                return
            more = message.get("more_body", False)
            if mode == "drop":
                if not more:
                    await send({"type": "http.response.body", "body": b""})
                return
            chunks.append(message.get("body", b""))
            if more:
                return
            assert start is not None
            body = b"".join(chunks)
            etag = body_etag(body)
            if etag_matches(if_none_match, etag):
                await send(_not_modified_start(etag))
                await send({"type": "http.response.body", "body": b""})
                return
            headers = MutableHeaders(raw=list(start.get("headers", [])))
            headers["ETag"] = etag
            await send({**start, "headers": headers.raw})
            await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, conditional_send)
        finally:
            _if_none_match.reset(token)


def _not_modified_start(etag: str) -> Message:
    return {"type": "http.response.start", "status": 304, "headers": [(b"etag", etag.encode())]}
