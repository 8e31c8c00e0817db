"""Reading, checking and writing MRI volumes and masks (NIfTI and MGH), in their own voxel order.

Preparing a volume for the model lives in :mod:`spottune.ml.preparation`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from spottune.ml.labels import LabelError, LabelSet, binarize

SUFFIXES = (".nii", ".nii.gz", ".mgz")
AFFINE_TOLERANCE = 1e-4


class VolumeError(ValueError):
    """A volume or mask that cannot be used; the message says what is wrong with it."""


@dataclass
class Volume:
    """A 3D image in its file's own voxel order.

    Attributes:
        data: float32 [X, Y, Z] intensities.
        affine: float64 [4, 4] voxel-to-world (RAS+ mm) transform.
    """

    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each voxel axis."""
        sizes = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.data.shape
        return (int(x), int(y), int(z))


def _suffix(name: str) -> str:
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise VolumeError(f"{name!r}: unsupported file type; expected one of {', '.join(SUFFIXES)}")


def _open(path: Path) -> Any:
    _suffix(path.name)
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise VolumeError(f"{path.name}: cannot be read as NIfTI/MGH ({exc})") from exc


def _spatial_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(
            f"{name}: expected a 3D volume (or 4D with a single volume), got shape {tuple(shape)}"
        )
    if min(shape) < 1:
        raise VolumeError(f"{name}: empty volume of shape {tuple(shape)}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def load_volume(path: Path, max_voxels: int | None = None) -> Volume:
    """Load a 3D image from .nii, .nii.gz or .mgz.

    The size is checked against `max_voxels` from the header before any voxel data is read.
    Raises VolumeError for unsupported files, wrong dimensionality, too many voxels or
    non-finite values.
    """
    path = Path(path)
    img = _open(path)
    shape = _spatial_shape(tuple(img.shape), path.name)
    n_voxels = int(np.prod(shape))
    if max_voxels is not None and n_voxels > max_voxels:
        raise VolumeError(f"{path.name}: {n_voxels} voxels exceeds the limit of {max_voxels}")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise VolumeError(f"{path.name}: voxel data cannot be read ({exc})") from exc
    if not np.isfinite(data).all():
        raise VolumeError(f"{path.name}: contains NaN or infinite values")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{path.name}: affine is singular or not finite")
    return Volume(data=data, affine=affine)


def check_mask(
    mask: np.ndarray, like: Volume, name: str = "mask", labels: LabelSet | None = None
) -> np.ndarray:
    """Return `mask` as bool after checking it is shaped like `like` and binarising it.

    Without `labels` a mask with one non-zero value ({0, k}) is binary; with them, the voxels
    carrying one of the labels are the foreground (see spottune.ml.labels).
    """
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.shape != like.data.shape:
        raise VolumeError(f"{name}: shape {mask.shape} differs from the image's {like.data.shape}")
    try:
        return binarize(np.asarray(mask), labels, name)
    except LabelError as exc:
        raise VolumeError(str(exc)) from None


def load_mask(path: Path, like: Volume, labels: LabelSet | None = None) -> np.ndarray:
    """Load a mask that must lie on the same voxel grid as `like`; returns bool [X, Y, Z]."""
    path = Path(path)
    img = _open(path)
    _spatial_shape(tuple(img.shape), path.name)
    affine = np.asarray(img.affine, dtype=np.float64)
    if tuple(img.shape[:3]) == like.data.shape and not np.allclose(
        affine, like.affine, atol=AFFINE_TOLERANCE
    ):
        raise VolumeError(
            f"{path.name}: affine differs from the image's; the mask is on another grid"
        )
    return check_mask(np.asanyarray(img.dataobj), like, path.name, labels)


def _nifti(mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(mask).astype(np.uint8), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.uint8)
    return img


def save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a binary mask as uint8 NIfTI (.nii.gz) with the given affine."""
    nib.save(_nifti(mask, affine), str(path))


def mask_to_nifti_bytes(mask: np.ndarray, affine: np.ndarray) -> bytes:
    """Encode a binary mask as the bytes of a gzipped uint8 NIfTI file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.nii.gz"
        save_mask(mask, affine, path)
        return path.read_bytes()


def volume_from_bytes(data: bytes, filename: str, max_voxels: int | None = None) -> Volume:
    """Load a volume from uploaded bytes; `filename` only decides the format by its suffix."""
    suffix = _suffix(filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        return load_volume(path, max_voxels=max_voxels)
