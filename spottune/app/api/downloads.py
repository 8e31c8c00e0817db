"""Streamed downloads of stored blobs."""

from __future__ import annotations

import uuid

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.blobs import iter_blob
from spottune.app.errors import NotFound
from spottune.app.models import Blob


def blob_response(
    session: Session,
    factory: sessionmaker[Session],
    blob_id: uuid.UUID,
    filename: str,
    media_type: str | None = None,
    inline: bool = False,
) -> StreamingResponse:
    blob = session.get(Blob, blob_id)
    if blob is None:
        raise NotFound("the stored file is missing")
    disposition = "inline" if inline else f'attachment; filename="{filename}"'
    headers = {
        "Content-Length": str(blob.size),
        "Content-Disposition": disposition,
        "ETag": f'"{blob.sha256}"',
    }
    return StreamingResponse(
        iter_blob(factory, blob_id), media_type=media_type or blob.content_type, headers=headers
    )
