"""Model uploads (config + safetensors weights, validated before storing) and deletion."""

from __future__ import annotations

import json
import struct
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from spottune.app.errors import Conflict, Invalid, NotFound, TooLarge
from spottune.app.repositories import jobs as job_repo
from spottune.app.repositories import models as model_repo
from spottune.app.services.quota import check_storage
from spottune.app.uploads import spool
from spottune.core import blobs
from spottune.core.models import Model
from spottune.core.settings import Settings

WEIGHTS_CONTENT_TYPE = "application/vnd.safetensors"
MAX_CONFIG_BYTES = 64 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ and torch's zip checkpoints
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def parse_config(text: str | bytes) -> dict[str, object]:
    """Validate a model config JSON; returns the normalised config (422 naming the field)."""
    from spottune.ml.config import ConfigError, ModelConfig

    if len(text) > MAX_CONFIG_BYTES:
        raise TooLarge(
            f"config exceeds {MAX_CONFIG_BYTES} bytes; a model config is a few hundred bytes"
        )
    try:
        config = ModelConfig.from_json(text)
    except ConfigError as exc:
        raise Invalid(str(exc), code="invalid_config") from None
    return config.model_dump(mode="json")


def _bad_weights(problem: str) -> Invalid:
    return Invalid(
        f"weights: {problem}; save the weights with safetensors.torch.save_file",
        code="invalid_weights",
    )


def _read_head(handle: BinaryIO) -> bytes:
    """The header-length prefix and the JSON header of a safetensors file (bounded size)."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        return prefix
    (header_len,) = struct.unpack("<Q", prefix)
    return prefix + handle.read(min(header_len, MAX_HEADER_BYTES))


def check_safetensors_header(data: bytes, total_size: int | None = None) -> None:
    """Refuse anything that is not a well-formed safetensors file, without loading a tensor.

    ``data`` is the file, or its first bytes (at least the whole header) when ``total_size``
    gives the file's size.

    Pickles are refused first with their own message (nothing uploaded is ever unpickled). Then
    every tensor's declared shape and dtype must match its ``data_offsets`` exactly and the
    tensors must tile the data section with no gap and nothing after it, so a header that
    claims a 10**12-element tensor, or data that is cut short, never reaches the worker.
    """
    if data.startswith(_PICKLE_MAGIC):
        raise Invalid(
            "weights: pickled checkpoints (.pt/.pth/.pkl) are refused for safety; "
            "save the weights as .safetensors (safetensors.torch.save_file)",
            code="invalid_weights",
        )
    total = len(data) if total_size is None else total_size
    if total < 10 or len(data) < 10:
        raise _bad_weights("not a valid .safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if not 2 <= header_len <= min(MAX_HEADER_BYTES, total - 8, len(data) - 8):
        raise _bad_weights("not a valid .safetensors file (header length out of range)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise _bad_weights("not a valid .safetensors file (header is not a JSON object)")
    _check_offsets(header, total - 8 - header_len)


def _tensor_bytes(key: str, entry: object) -> tuple[int, int, int]:
    """(begin, end, declared bytes) of one header entry; 422 naming ``key`` if malformed."""
    if not isinstance(entry, dict):
        raise _bad_weights(f"header entry {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise _bad_weights(f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad_weights(f"tensor {key!r} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad_weights(f"tensor {key!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for d in shape:
        numel *= d
    return offsets[0], offsets[1], numel * _DTYPE_BYTES[dtype]


def _check_offsets(header: dict[str, object], data_bytes: int) -> None:
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end, declared = _tensor_bytes(key, entry)
        if end - begin != declared:
            raise _bad_weights(
                f"tensor {key!r} declares {declared} bytes (shape and dtype) but its "
                f"data_offsets cover {end - begin}"
            )
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise _bad_weights(f"tensor {key!r} overlaps another or leaves a gap before it")
        position = end
    if position != data_bytes:
        raise _bad_weights(
            f"the header describes {position} bytes of tensor data but the file holds {data_bytes}"
        )


def create_model(
    session: Session,
    settings: Settings,
    clinic_id: uuid.UUID,
    *,
    weights: BinaryIO,
    config_text: str | bytes,
    name: str | None,
) -> Model:
    """Validate config and weights (network built on the meta device), then store."""
    from spottune.ml.checkpoint import CheckpointError, validate_weights
    from spottune.ml.config import ModelConfig

    if name is not None and not 1 <= len(name.strip()) <= 200:
        raise Invalid("name: give 1 to 200 characters", code="invalid_name")
    config = parse_config(config_text)
    # Weights may be a gigabyte: they go from the upload to a file to the database in chunks,
    # and only their header (names, shapes, dtypes, offsets) is ever read into memory.
    with tempfile.TemporaryDirectory(prefix="spottune-upload-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        size = spool(weights, path, settings.max_upload_bytes, "weights")
        with path.open("rb") as handle:
            head = _read_head(handle)
            check_safetensors_header(head, size)
            try:
                validate_weights(head, ModelConfig.model_validate(config))
            except CheckpointError as exc:
                raise Invalid(
                    f"weights do not match the config: {exc}", code="invalid_weights"
                ) from None
            check_storage(session, settings, clinic_id, size)
            handle.seek(0)
            blob = blobs.write_blob(session, clinic_id, handle, WEIGHTS_CONTENT_TYPE)
    model = Model(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        name=(name or "model").strip(),
        config=config,
        weights_blob_id=blob.id,
        size_bytes=size,
    )
    session.add(model)
    session.flush()
    return model


def get_model(session: Session, clinic_id: uuid.UUID, model_id: uuid.UUID) -> Model:
    model = model_repo.get(session, clinic_id, model_id)
    if model is None:
        raise NotFound(f"model {model_id} not found; list your models with GET /v1/models")
    return model


def delete_model(session: Session, clinic_id: uuid.UUID, model_id: uuid.UUID) -> None:
    model = get_model(session, clinic_id, model_id)
    for job in job_repo.active_jobs(session, clinic_id):
        if job.params.get("model_id") == str(model_id):
            raise Conflict(
                f"model {model_id} is used by {job.status.value} job {job.id}; "
                "cancel the job or wait for it to finish",
                code="model_in_use",
            )
    blob_id = model.weights_blob_id
    session.delete(model)
    session.flush()
    blobs.delete_blob(session, blob_id)
