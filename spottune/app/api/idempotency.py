"""``Idempotency-Key`` on POST requests: a retried request answers what the first one created.

The key is scoped to the clinic. Its row is written in the same transaction as the object the
request creates, so either both exist or neither does: a retry after a lost answer finds the
row and gets the same object again (same status, ``Idempotent-Replayed: true``); a retry after a
failure runs again. The same key with a different request (method, path or body) is a 409.
Two concurrent requests with one key cannot both commit: the unique (clinic, key) constraint
makes the second roll back, and it answers the first one's object.

Bodies are compared by content, not bytes: a multipart upload is fingerprinted by its field
values and the sha256 of each file, because a client that retries builds a new multipart
boundary every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, BinaryIO

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from spottune.app.api.deps import CurrentClinic, SessionDep
from spottune.app.errors import ApiError, Conflict, Invalid, NotFound
from spottune.app.repositories import idempotency as repo
from spottune.core.models import IdempotencyKey

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_DIGEST_CHUNK = 1024 * 1024


class IdempotentReplay(ApiError):
    """Not an error: the answer to a repeated request, rendered from what the first created."""

    status_code = 200

    def __init__(self, response: JSONResponse) -> None:
        super().__init__("replayed")
        self.response = response


# resource name -> renders the object (session, clinic id, object id) as the first answer did
Presenter = Callable[[Session, uuid.UUID, uuid.UUID], BaseModel | None]
_PRESENTERS: dict[str, Presenter] = {}


def register_presenter(resource: str, presenter: Presenter) -> None:
    """Routers register how to render what they create (no import cycle with the routes)."""
    _PRESENTERS[resource] = presenter


def _file_digest(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    while chunk := handle.read(_DIGEST_CHUNK):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest()


async def _body_fingerprint(request: Request) -> str:
    content_type = request.headers.get("content-type", "")
    parts: list[Any] = [request.method, request.url.path, request.url.query]
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()  # parsed once: FastAPI reuses it for the route
        fields = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                digest = await run_in_threadpool(_file_digest, value.file)
                fields.append([name, "file", value.filename or "", digest])
            else:
                fields.append([name, "text", value])
        parts.append(sorted(fields))
    else:
        body = await request.body()
        try:
            parts.append(json.loads(body) if body else None)
        except ValueError:
            parts.append(hashlib.sha256(body).hexdigest())
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _key_and_fingerprint(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="any unique string (a UUID): a retry with the same key and request "
            "answers what the first one created, and creates nothing",
        ),
    ] = None,
) -> tuple[str, str] | None:
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise Invalid(
            f"{HEADER}: give 1 to {MAX_KEY_CHARS} printable characters (a UUID is a good key)",
            code="invalid_idempotency_key",
        )
    return key, await _body_fingerprint(request)


@dataclass
class Idempotency:
    """The request's key (None without the header); :meth:`record` before committing."""

    clinic_id: uuid.UUID
    key: str | None = None
    fingerprint: str = ""

    def record(
        self, session: Session, resource: str, resource_id: uuid.UUID, status_code: int
    ) -> None:
        """Write the key in the request's transaction; a concurrent twin that won answers."""
        if self.key is None:
            return
        try:
            session.add(
                IdempotencyKey(
                    id=uuid.uuid4(),
                    clinic_id=self.clinic_id,
                    key=self.key,
                    fingerprint=self.fingerprint,
                    resource=resource,
                    resource_id=resource_id,
                    status_code=status_code,
                )
            )
            session.flush()
        except IntegrityError:
            # Another request with this key committed first: undo everything this one did.
            session.rollback()
            logger.info("%s %r: a concurrent request committed first", HEADER, self.key)
            existing = repo.find(session, self.clinic_id, self.key)
            if existing is None:  # the other one rolled back after all: let the client retry
                raise Conflict(
                    f"a request with {HEADER} {self.key!r} is in progress; retry in a moment",
                    code="idempotency_key_in_use",
                    headers={"Retry-After": "1"},
                ) from None
            raise _answer(session, existing, self.fingerprint) from None


def _answer(session: Session, row: IdempotencyKey, fingerprint: str) -> ApiError:
    if row.fingerprint != fingerprint:
        return Conflict(
            f"{HEADER} {row.key!r} was already used for a different request; "
            "use a new key for a new request",
            code="idempotency_key_reused",
        )
    presenter = _PRESENTERS.get(row.resource)
    body = presenter(session, row.clinic_id, row.resource_id) if presenter else None
    if body is None:
        return NotFound(
            f"the {row.resource[:-1]} {row.resource_id} that {HEADER} {row.key!r} created "
            "has been deleted since",
            code="idempotent_object_gone",
        )
    return IdempotentReplay(
        JSONResponse(
            body.model_dump(mode="json"),
            status_code=row.status_code,
            headers={
                "Location": f"/v1/{row.resource}/{row.resource_id}",
                REPLAYED_HEADER: "true",
            },
        )
    )


def get_idempotency(
    key_and_fingerprint: Annotated[tuple[str, str] | None, Depends(_key_and_fingerprint)],
    session: SessionDep,
    clinic: CurrentClinic,
) -> Idempotency:
    """The request's key; answers at once (replay or 409) when the key was used before."""
    if key_and_fingerprint is None:
        return Idempotency(clinic_id=clinic.id)
    key, fingerprint = key_and_fingerprint
    existing = repo.find(session, clinic.id, key)
    if existing is not None:
        raise _answer(session, existing, fingerprint)
    return Idempotency(clinic_id=clinic.id, key=key, fingerprint=fingerprint)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]


async def replay_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotentReplay)
    return exc.response
