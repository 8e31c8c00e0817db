"""HTTP with retries: 503 (and 502/504, and 429 that says when) and connection errors are retried
with exponential backoff. Every POST carries an ``Idempotency-Key`` that stays the same across
its retries, so a request whose answer was lost is answered, not executed, the second time."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from spottune.client.errors import ApiError, ConnectionFailed

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
MAX_DELAY_S = 30.0
IDEMPOTENCY_HEADER = "Idempotency-Key"

FilesFactory = Callable[[contextlib.ExitStack], dict[str, Any]]


def api_error(response: httpx.Response) -> ApiError:
    """The API's ``{"error": {"code", "message"}}`` as an exception (or the raw text)."""
    code, message = "http_error", response.text[:500] or response.reason_phrase
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    return ApiError(
        response.status_code, code, message, response.request.method, response.request.url.path
    )


class Transport:
    """One ``httpx.Client`` with authentication, retries and error mapping."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float,
        retries: int,
        backoff_s: float,
        http: httpx.Client | None = None,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.http.headers.setdefault("User-Agent", "spottune-client/1")

    def close(self) -> None:
        self.http.close()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), MAX_DELAY_S * 2)
        return float(min(self.backoff_s * 2**attempt, MAX_DELAY_S))

    def _retryable(self, response: httpx.Response) -> bool:
        if response.status_code in RETRY_STATUSES:
            return True
        # A 429 that says when to come back (the service is busy), not "too many jobs" for good.
        return response.status_code == 429 and "retry-after" in response.headers

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        files: FilesFactory | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Iterator[httpx.Response]:
        """The response of a successful request, its body not read yet; raises ApiError else."""
        headers = dict(headers or {})
        if method == "POST":
            headers.setdefault(IDEMPOTENCY_HEADER, str(uuid.uuid4()))
        attempt = 0
        while True:
            with contextlib.ExitStack() as stack:
                try:
                    request = self.http.build_request(
                        method, path, params=params, json=json, data=data,
                        files=files(stack) if files is not None else None, headers=headers,
                    )
                    response = self.http.send(request, stream=True)
                except httpx.TransportError as exc:
                    if attempt >= self.retries:
                        raise ConnectionFailed(
                            f"{method} {self.http.base_url}{path}: {type(exc).__name__}: {exc} "
                            f"(after {attempt + 1} attempts; is the service running?)"
                        ) from exc
                    delay = self._delay(attempt, None)
                    logger.warning("%s %s: %s; retrying in %.1f s", method, path, exc, delay)
                else:
                    try:
                        if response.status_code in ok:
                            yield response
                            return
                        response.read()
                        if not self._retryable(response) or attempt >= self.retries:
                            raise api_error(response)
                        delay = self._delay(attempt, response)
                        logger.warning("%s %s: HTTP %d; retrying in %.1f s", method, path,
                                       response.status_code, delay)
                    finally:
                        response.close()
            time.sleep(delay)
            attempt += 1

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Like :meth:`stream`, with the body read."""
        with self.stream(method, path, **kwargs) as response:
            response.read()
            return response
