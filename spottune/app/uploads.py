"""Bounded uploads: a request body limit (413) and copying an upload to a private temp file.

Client file names only ever choose a suffix from a fixed list; they are never used as paths
and never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spottune.app.errors import Invalid, TooLarge, error_response

COPY_CHUNK = 1024 * 1024
MULTIPART_SLACK = 1024 * 1024  # form fields and part headers on top of the files


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


class BodyLimitMiddleware:
    """Refuse request bodies above ``max_bytes`` with 413, before they are parsed or stored."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"request body exceeds the limit of {_mib(self.max_bytes)}; "
            "upload a smaller file (or ask the operator to raise SPOTTUNE_MAX_UPLOAD_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "too_large", self._message())
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


def pick_suffix(filename: str | None, allowed: tuple[str, ...], what: str) -> str:
    """The allowed suffix ``filename`` ends with (case-insensitive), else 422."""
    lower = (filename or "").lower()
    for suffix in sorted(allowed, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    raise Invalid(
        f"{what}: unsupported file type; upload a file ending in {', '.join(allowed)}",
        code="unsupported_file_type",
    )


def spool(source: BinaryIO, dest: Path, max_bytes: int, what: str) -> int:
    """Copy ``source`` into ``dest`` (a path we chose) counting bytes; 413 above ``max_bytes``.

    Returns the number of bytes written; an empty upload is refused with 422.
    """
    source.seek(0)
    written = 0
    with dest.open("wb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise TooLarge(
                    f"{what} exceeds the upload limit of {_mib(max_bytes)}; upload a smaller file"
                )
            out.write(chunk)
    if written == 0:
        raise Invalid(f"{what} is empty; upload the file's contents", code="empty_file")
    return written


def read_limited(source: BinaryIO, max_bytes: int, what: str) -> bytes:
    """Read a small upload (e.g. a JSON config) fully, refusing more than ``max_bytes``."""
    source.seek(0)
    data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{what} exceeds {_mib(max_bytes)}")
    return data


def check_annotated_slices(slices: list[int] | None, shape: tuple[int, ...]) -> None:
    """Refuse annotated slice indices outside the volume (any axis may be the slicing one)."""
    if slices is None:
        return
    bound = max(shape)
    bad = [i for i in slices if not 0 <= i < bound]
    if bad:
        raise Invalid(
            f"annotated_slices {bad} are outside 0..{bound - 1} for a volume of shape "
            f"{list(shape)}",
            code="invalid_annotated_slices",
        )
