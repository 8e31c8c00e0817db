"""``Server-Timing: app;dur=<ms>`` on every answer: how long the application took from receiving
the request to starting its answer, so that a client (and ``bench/load.py``) can tell the
server's share of a latency from the network's and from queueing in front of the API. Job status
polls skip the middleware stack and get theirs from :mod:`spottune.app.status_poll`."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def server_timing(start: float) -> tuple[bytes, bytes]:
    """The ``Server-Timing`` header of an answer whose request arrived at ``start``
    (``time.perf_counter()``)."""
    return (b"server-timing", b"app;dur=%.2f" % ((time.perf_counter() - start) * 1000))


def timed(send: Send, start: float) -> Send:
    """``send`` with :func:`server_timing` added to the answer's start."""

    async def timed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), server_timing(start)]}
        await send(message)

    return timed_send


class ServerTimingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, timed(send, time.perf_counter()))
