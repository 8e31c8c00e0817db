"""Exceptions of the Python client: each says what went wrong and carries the API's code."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spottune.client.types import Job


class SpottuneError(Exception):
    """Base class of every error the client raises."""


class ApiError(SpottuneError):
    """The API answered with an error: ``status_code``, ``code`` and ``message`` from its body."""

    def __init__(self, status_code: int, code: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message


class ConnectionFailed(SpottuneError):
    """The service could not be reached (or kept answering 503) through every retry."""


class JobFailed(SpottuneError):
    """A waited-for job ended ``failed`` or ``cancelled``; ``job`` holds its final state."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} {job.status}: {job.error or 'no reason given'}")
        self.job = job


class WaitTimeout(SpottuneError, TimeoutError):
    """A job was still queued or running when ``wait(timeout=...)`` ran out."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            f"job {job.id} still {job.status} after {timeout:.0f} s "
            f"(step {job.progress.step}/{job.progress.total})"
        )
        self.job = job
