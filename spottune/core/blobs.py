"""Artefacts (scans, masks, weights, reports) stored in the database as 1 MiB chunks.

Every function takes a session (or a session factory for streaming) and never commits:
the request or task boundary does.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from spottune.core.models import CHUNK_BYTES, Blob, BlobChunk


def write_blob(
    session: Session, clinic_id: uuid.UUID, data: BinaryIO | bytes, content_type: str
) -> Blob:
    """Store ``data`` (bytes or a readable binary file) chunk by chunk; returns the flushed Blob."""
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    blob = Blob(id=uuid.uuid4(), clinic_id=clinic_id, size=0, sha256="", content_type=content_type)
    session.add(blob)
    session.flush()
    digest = hashlib.sha256()
    size = 0
    seq = 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
        # Core insert: chunks do not pile up in the identity map.
        session.execute(insert(BlobChunk).values(blob_id=blob.id, seq=seq, data=chunk))
        seq += 1
    blob.size = size
    blob.sha256 = digest.hexdigest()
    session.flush()
    return blob


def _chunk_seqs(session: Session, blob_id: uuid.UUID) -> list[int]:
    rows = session.scalars(
        select(BlobChunk.seq).where(BlobChunk.blob_id == blob_id).order_by(BlobChunk.seq)
    )
    return list(rows)


def _chunk(session: Session, blob_id: uuid.UUID, seq: int) -> bytes:
    return session.scalars(
        select(BlobChunk.data).where(BlobChunk.blob_id == blob_id, BlobChunk.seq == seq)
    ).one()


def iter_blob(session_factory: sessionmaker[Session], blob_id: uuid.UUID) -> Iterator[bytes]:
    """Yield the blob's chunks in order from a session of its own (for streamed responses)."""
    with session_factory() as session:
        for seq in _chunk_seqs(session, blob_id):
            yield _chunk(session, blob_id, seq)


def read_blob(session: Session, blob_id: uuid.UUID) -> bytes:
    """The whole blob in memory (small artefacts: configs, reports, masks of one scan)."""
    chunks = session.scalars(
        select(BlobChunk.data).where(BlobChunk.blob_id == blob_id).order_by(BlobChunk.seq)
    )
    return b"".join(chunks)


def delete_blob(session: Session, blob_id: uuid.UUID) -> None:
    """Delete the blob and its chunks (explicitly: SQLite may lack ON DELETE CASCADE)."""
    session.execute(delete(BlobChunk).where(BlobChunk.blob_id == blob_id))
    session.execute(delete(Blob).where(Blob.id == blob_id))


def clinic_stored_bytes(session: Session, clinic_id: uuid.UUID) -> int:
    """Total bytes the clinic stores (for the per-clinic quota)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.clinic_id == clinic_id)
    )
    return int(total or 0)
