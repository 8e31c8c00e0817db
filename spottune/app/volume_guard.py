"""Structural checks of an uploaded volume before nibabel reads any voxel data.

nibabel reads exactly the bytes a header declares, so a compressed file padded with gigabytes of
extra data (a "zip bomb") or a header that promises more voxels than the file holds would either
be stored as is or fail with an obscure message. Here the header is parsed on its own, its size
is checked against the limits, and the (de)compressed stream is read once, in bounded chunks,
never inflating more than the header declares plus a little slack.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header

from spottune.app.errors import Invalid
from spottune.core.formats import GZIP_MAGIC

READ_CHUNK = 1024 * 1024
TRAILING_SLACK = 1024 * 1024  # MGH tags and stray padding after the voxel data, bytes
_NIFTI1_BYTES, _NIFTI2_BYTES, _MGH_BYTES = 348, 540, 284
_COMPRESSED = (".nii.gz", ".mgz")
_MGH_TYPES: dict[int, np.dtype] = {
    0: np.dtype(">u1"),
    1: np.dtype(">i4"),
    3: np.dtype(">f4"),
    4: np.dtype(">i2"),
}


def _refuse(what: str, problem: str) -> Invalid:
    code = "invalid_mask" if what == "mask" else "invalid_image"
    return Invalid(f"{what}: {problem}", code=code)


@contextmanager
def _open_stream(path: Path, suffix: str, what: str) -> Iterator[BinaryIO]:
    if suffix in _COMPRESSED:
        with path.open("rb") as raw:
            if raw.read(2) != GZIP_MAGIC:
                raise _refuse(what, f"a {suffix} file must be gzip-compressed; this one is not")
        with gzip.open(path, "rb") as stream:
            yield stream  # type: ignore[misc]
    else:
        with path.open("rb") as stream:
            yield stream


def _read(stream: BinaryIO, n: int, what: str) -> bytes:
    try:
        return stream.read(n)
    except (EOFError, OSError, zlib.error) as exc:
        raise _refuse(
            what, f"the compressed data is truncated or damaged ({exc}); upload the file again"
        ) from None


def _mgh_header(head: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """MGH: big-endian int32 version, width, height, depth, frames, type; data at byte 284."""
    version, *dims, frames, type_code = struct.unpack(">6i", head[:24])
    if version != 1 or type_code not in _MGH_TYPES:
        raise ValueError(f"version {version} / voxel type code {type_code} is not MGH's")
    shape = tuple(dims) if frames == 1 else (*dims, frames)
    return shape, _MGH_TYPES[type_code], _MGH_BYTES


def _header(head: bytes, suffix: str, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(declared shape, voxel dtype, offset of the voxel data in bytes) from the file's start."""
    try:
        if suffix == ".mgz":
            return _mgh_header(head)
        size_le = int.from_bytes(head[:4], "little")
        size_be = int.from_bytes(head[:4], "big")
        if _NIFTI2_BYTES in (size_le, size_be):
            nifti = Nifti2Header.from_fileobj(io.BytesIO(head[:_NIFTI2_BYTES]), check=False)
        else:  # extensions are skipped: vox_offset says where the voxels start
            nifti = Nifti1Header.from_fileobj(io.BytesIO(head[:_NIFTI1_BYTES]), check=False)
        magic = bytes(nifti["magic"]).rstrip(b"\0")
        if magic not in (b"n+1", b"n+2"):
            raise ValueError(f"magic {magic!r} is not that of a single-file NIfTI")
        shape = tuple(int(d) for d in nifti.get_data_shape())
        return shape, np.dtype(nifti.get_data_dtype()), int(nifti.get_data_offset())
    except Invalid:
        raise
    except Exception as exc:  # nibabel raises many types for garbage headers
        raise _refuse(
            what, f"not a NIfTI-1/NIfTI-2 or MGH volume: its header cannot be read ({exc})"
        ) from None


def check_volume_file(path: Path, suffix: str, max_voxels: int, what: str) -> None:
    """Refuse ``path`` (named by the allowed ``suffix``) unless its header and size agree.

    Checks, in order: gzip framing for .nii.gz/.mgz, a readable header, positive dimensions,
    at most ``max_voxels`` voxels in all dimensions together, a numeric voxel type, and that the
    (decompressed) file holds the declared voxel bytes and not much more. Reads the stream at
    most once and stops ``TRAILING_SLACK`` bytes after the declared end (constant memory).
    """
    with _open_stream(path, suffix, what) as stream:
        head = _read(stream, _NIFTI2_BYTES, what)
        shape, dtype, offset = _header(head, suffix, what)
        if not shape or min(shape) < 1:
            raise _refuse(what, f"the header declares an empty or negative shape {list(shape)}")
        n_voxels = int(np.prod([int(d) for d in shape], dtype=object))
        if n_voxels > max_voxels:
            raise _refuse(
                what,
                f"the header declares shape {list(shape)} = {n_voxels} voxels, more than the "
                f"limit of {max_voxels}; crop or downsample the volume",
            )
        if dtype.kind not in "biuf":
            raise _refuse(
                what, f"voxel type {dtype} is not supported; save the volume as integers or floats"
            )
        declared_end = offset + n_voxels * dtype.itemsize
        seen = len(head)
        limit = declared_end + TRAILING_SLACK
        while seen <= limit and (chunk := _read(stream, READ_CHUNK, what)):
            seen += len(chunk)
    if seen < declared_end:
        raise _refuse(
            what,
            f"the header declares shape {list(shape)} of {dtype} ({declared_end - offset} bytes "
            f"of voxel data) but the file holds only {max(seen - offset, 0)}; the file is "
            "truncated or its header is wrong",
        )
    if seen > limit:
        raise _refuse(
            what,
            f"the file {'decompresses to' if suffix in _COMPRESSED else 'holds'} more than the "
            f"{declared_end} bytes its header declares (extra data, e.g. a decompression bomb); "
            "refused without reading it all",
        )
