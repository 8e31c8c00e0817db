"""File formats of stored volumes: the suffix an upload chose is kept as the blob's content type."""

from __future__ import annotations

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgz")
CONTENT_TYPES = {
    ".nii": "application/x-nifti",
    ".nii.gz": "application/gzip",
    ".mgz": "application/x-mgh+gzip",
}
SUFFIX_OF = {v: k for k, v in CONTENT_TYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_GZ = CONTENT_TYPES[".nii.gz"]
SAFETENSORS = "application/octet-stream"


def volume_suffix(content_type: str | None, head: bytes) -> str:
    """The file suffix to read a stored volume with: its content type's, else sniffed."""
    suffix = SUFFIX_OF.get(content_type or "")
    if suffix is not None:
        return suffix
    return ".nii.gz" if head[:2] == GZIP_MAGIC else ".nii"
