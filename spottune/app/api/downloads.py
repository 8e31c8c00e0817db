"""Downloads of stored blobs: small ones in one response, large ones streamed."""

from __future__ import annotations

import uuid

from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.conditional import not_modified
from spottune.app.errors import NotFound
from spottune.core.blobs import iter_blob, read_blob
from spottune.core.models import Blob

INLINE_MAX_BYTES = 8 * 1024 * 1024  # masks, reports, small models: read at once


def blob_response(
    session: Session,
    factory: sessionmaker[Session],
    blob_id: uuid.UUID,
    filename: str,
    media_type: str | None = None,
    inline: bool = False,
) -> Response:
    """The blob as a response, holding at most one database connection at a time.

    A small blob is read with the request's own session. A large one is streamed from a
    session of its own, so the request's session is closed first: otherwise every streamed
    download would hold two pooled connections and concurrent downloads could exhaust the
    pool and wait on each other.
    """
    blob = session.get(Blob, blob_id)
    if blob is None:
        raise NotFound("the stored file is missing")
    etag = f'"{blob.sha256}"'
    if not_modified(etag):  # the client has this file already: do not read it
        return Response(status_code=304, headers={"ETag": etag})
    disposition = "inline" if inline else f'attachment; filename="{filename}"'
    headers = {"Content-Length": str(blob.size), "Content-Disposition": disposition, "ETag": etag}
    media_type = media_type or blob.content_type
    if blob.size <= INLINE_MAX_BYTES:
        return Response(read_blob(session, blob_id), media_type=media_type, headers=headers)
    session.close()  # give the connection back before the stream takes its own
    return StreamingResponse(iter_blob(factory, blob_id), media_type=media_type, headers=headers)
