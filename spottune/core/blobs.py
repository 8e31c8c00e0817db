"""Artefacts (scans, masks, weights, reports) stored in the database as 1 MiB chunks.

Every function takes a session and never commits: the request or task boundary does. The
exceptions take a session factory and commit short transactions of their own: streaming a blob
out, and *staging* a job's result blobs (:func:`stage_blob`, :func:`discard_blobs`), so that
writing or dropping a large result never holds the database's write lock (SQLite has one for the
whole file) for longer than a few chunks, and a cancel never waits behind it.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from spottune.contract import JobStatus
from spottune.core.models import CHUNK_BYTES, Blob, BlobChunk, Job

# Chunks written (or deleted) per transaction when staging a result: on SQLite a transaction holds
# the database's one write lock, and a cancel waits for at most one of these (tens of ms); one
# chunk per transaction would write a large result ~1.8x slower than a single transaction, four
# ~1.4x (fewer commits and checkpoints).
STAGE_CHUNKS = 4


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


def stage_blob(
    factory: sessionmaker[Session],
    blob_id: uuid.UUID,
    clinic_id: uuid.UUID,
    job_id: uuid.UUID,
    data: BinaryIO | bytes,
    content_type: str,
    check: Callable[[], None] | None = None,
) -> Blob:
    """Store ``data`` as blob ``blob_id``, staged for ``job_id``, ``STAGE_CHUNKS`` chunks per
    transaction.

    A staged blob is part of no result yet: :func:`unstage` adopts it in the transaction that
    records the result, :func:`discard_blobs` drops it, and :func:`abandoned_staged` finds those
    a stopped worker left behind. ``check`` runs before each chunk and may raise to stop early
    (the caller then discards what was staged). Returns the blob, detached.
    """
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    blob = Blob(id=blob_id, clinic_id=clinic_id, size=0, sha256="", content_type=content_type,
                staged_job_id=job_id)
    with factory.begin() as session:
        session.add(blob)
    digest = hashlib.sha256()
    size = 0
    seq = 0
    while batch := _read_chunks(stream, STAGE_CHUNKS):
        if check is not None:
            check()
        written = sum(len(chunk) for chunk in batch)
        with factory.begin() as session:  # the size always adds up to the chunks stored
            session.execute(insert(BlobChunk), [
                {"blob_id": blob_id, "seq": seq + k, "data": chunk} for k, chunk in enumerate(batch)
            ])
            session.execute(update(Blob).where(Blob.id == blob_id)
                            .values(size=Blob.size + written))
        seq += len(batch)
        size += written
        for chunk in batch:
            digest.update(chunk)
    with factory.begin() as session:
        session.execute(update(Blob).where(Blob.id == blob_id).values(sha256=digest.hexdigest()))
    blob.size, blob.sha256 = size, digest.hexdigest()
    return blob


def _read_chunks(stream: BinaryIO, n: int) -> list[bytes]:
    """Up to ``n`` chunks of CHUNK_BYTES from ``stream`` (fewer at its end, none after it)."""
    chunks: list[bytes] = []
    while len(chunks) < n and (chunk := stream.read(CHUNK_BYTES)):
        chunks.append(chunk)
    return chunks


def unstage(session: Session, blob_ids: list[uuid.UUID]) -> None:
    """Make staged blobs ordinary ones (in the transaction that records the result using them)."""
    if blob_ids:
        session.execute(update(Blob).where(Blob.id.in_(blob_ids)).values(staged_job_id=None))


def discard_blobs(factory: sessionmaker[Session], blob_ids: list[uuid.UUID]) -> None:
    """Delete blobs ``STAGE_CHUNKS`` chunks per transaction (a missing blob is no error)."""
    for blob_id in blob_ids:
        while True:
            with factory.begin() as session:
                seqs = list(session.scalars(select(BlobChunk.seq)
                                            .where(BlobChunk.blob_id == blob_id)
                                            .limit(STAGE_CHUNKS)))
                if not seqs:
                    session.execute(delete(Blob).where(Blob.id == blob_id))
                    break
                freed = session.scalars(
                    delete(BlobChunk)
                    .where(BlobChunk.blob_id == blob_id, BlobChunk.seq.in_(seqs))
                    .returning(func.length(BlobChunk.data))).all()
                session.execute(update(Blob).where(Blob.id == blob_id)
                                .values(size=Blob.size - sum(freed)))


def abandoned_staged(session: Session, limit: int) -> list[uuid.UUID]:
    """Blobs staged for a job that no longer runs (or no longer exists): no result will use them.

    Blobs staged for a running job are kept, even those of an earlier attempt that was given up
    for lost: they go once the job has ended.
    """
    stmt = (
        select(Blob.id)
        .outerjoin(Job, Job.id == Blob.staged_job_id)
        .where(Blob.staged_job_id.is_not(None),
               or_(Job.id.is_(None), Job.status != JobStatus.RUNNING))
        .limit(limit)
    )
    return list(session.scalars(stmt))


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
