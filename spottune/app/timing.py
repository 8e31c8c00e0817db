"""``Server-Timing: app;dur=<ms>`` on every answer: how long the application took from receiving
the request to starting its answer, so that a client (and ``bench/load.py``) can tell the
server's share of a latency from the network's and from queueing in front of the API. Job status
polls skip the middleware stack and get theirs from :mod:`spottune.app.status_poll`."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ServerTimingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000
                headers = [*message.get("headers", []), (b"server-timing", b"app;dur=%.2f" % ms)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)
