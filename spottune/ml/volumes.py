"""Loading, checking and preparing MRI volumes for a 2D slice model, and undoing the preparation.

A volume is prepared by reorienting it to canonical RAS, taking slices along the configured RAS
axis, resampling each slice in-plane to the model's spacing and scaling intensities to [0, 1].
Slices are never resampled through-plane, so every uploaded slice maps to exactly one prepared
slice and a predicted stack can be put back onto the upload's own voxel grid.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations
from scipy import ndimage

from spottune.ml.config import Preprocessing
from spottune.ml.labels import LabelError, LabelSet, binarize

logger = logging.getLogger(__name__)

SUFFIXES = (".nii", ".nii.gz", ".mgz")
AFFINE_TOLERANCE = 1e-4
_RESAMPLE_CHUNK = 64  # slices per interpolation call (bounds temporary memory)
_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


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


@dataclass
class PreparedVolume:
    """Slices ready for the model plus what is needed to put predictions back on the original grid.

    Attributes:
        image: float32 [S, H, W] slices at the model's in-plane spacing, intensities in [0, 1].
        mask: uint8 [S, H, W] binary mask, or None when no mask was given.
        annotated: bool [S], which prepared slices carry annotation.
        original_shape: the uploaded array's shape.
        affine: the uploaded volume's affine.
        ornt: nibabel orientation [3, 2] taking the uploaded voxel axes to RAS.
        slice_axis: RAS axis the slices were taken along.
        plane_shape: in-plane shape (H0, W0) of each slice before in-plane resampling.
    """

    image: np.ndarray
    mask: np.ndarray | None
    annotated: np.ndarray
    original_shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    slice_axis: int
    plane_shape: tuple[int, int]


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


def _resample(stack: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Resample [S, H, W] in-plane to [S, *shape] (pixel-area aligned, no through-plane change).

    Linear (order 1) runs as torch bilinear interpolation (align_corners=False clamps at the
    edges like scipy's grid_mode=True, mode="nearest"), in chunks of slices: several times
    faster than ndimage.zoom, which interpolates along the unchanged slice axis too.
    """
    if stack.shape[1:] == shape:
        return stack
    if order == 1:
        out = np.empty((stack.shape[0], *shape), dtype=np.float32)
        source = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
        for start in range(0, stack.shape[0], _RESAMPLE_CHUNK):
            chunk = source[start : start + _RESAMPLE_CHUNK, None]
            out[start : start + chunk.shape[0]] = F.interpolate(
                chunk, size=shape, mode="bilinear", align_corners=False
            )[:, 0].numpy()
        return out
    factors = (1.0, shape[0] / stack.shape[1], shape[1] / stack.shape[2])
    out = ndimage.zoom(stack, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape[1:] != shape:  # guards against rounding in scipy's output shape
        raise RuntimeError(f"resampled to {out.shape[1:]}, expected {shape}")
    return out


def _scale_intensities(data: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    low, high = np.percentile(data, percentiles)
    if high <= low:
        return np.zeros(data.shape, dtype=np.float32)
    scaled = (np.clip(data, low, high) - low) / (high - low)
    return scaled.astype(np.float32, copy=False)


def _source_axis(ornt: np.ndarray, slice_axis: int) -> int:
    """The uploaded voxel axis that `ornt` maps to RAS axis `slice_axis`."""
    return int(np.flatnonzero(ornt[:, 0] == slice_axis)[0])


def _annotated(
    ornt: np.ndarray, shape: tuple[int, int, int], slice_axis: int, indices: Sequence[int]
) -> np.ndarray:
    """Map slice indices along the uploaded voxel axis to prepared (RAS) slice indices."""
    source_axis = _source_axis(ornt, slice_axis)
    n = shape[source_axis]
    flags = np.zeros(n, dtype=bool)
    for index in indices:
        if not 0 <= int(index) < n:
            raise VolumeError(
                f"annotated slice {index} is outside 0..{n - 1} (voxel axis {source_axis})"
            )
        flags[n - 1 - int(index) if ornt[source_axis, 1] < 0 else int(index)] = True
    return flags


def slice_voxel_axis(volume: Volume, prep: Preprocessing) -> int:
    """The uploaded array's voxel axis that slices are taken along (e.g. for --every-k)."""
    return _source_axis(orientations.io_orientation(volume.affine), prep.slice_axis)


def prepare_volume(
    volume: Volume,
    prep: Preprocessing,
    mask: np.ndarray | None = None,
    annotated_slices: Sequence[int] | None = None,
) -> PreparedVolume:
    """Reorient to RAS, slice along `prep.slice_axis`, resample in-plane and scale to [0, 1].

    Args:
        volume: the uploaded image.
        prep: preprocessing of the model the slices are for.
        mask: optional binary mask on the volume's grid.
        annotated_slices: indices along the uploaded voxel axis that maps to `prep.slice_axis`;
            None means every slice when a mask is given.
    """
    if annotated_slices is not None and mask is None:
        raise VolumeError("annotated slices were given without a mask")
    ornt = orientations.io_orientation(volume.affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = volume.spacing
    in_plane = [axis for axis in range(3) if axis != prep.slice_axis]

    def to_stack(array: np.ndarray) -> np.ndarray:
        return np.moveaxis(orientations.apply_orientation(array, ornt), prep.slice_axis, 0)

    scaled = _scale_intensities(volume.data, prep.clip_percentiles)
    stack = to_stack(scaled)
    plane_shape = (int(stack.shape[1]), int(stack.shape[2]))
    target = tuple(
        max(1, round(n * spacing[axis] / mm))
        for n, axis, mm in zip(plane_shape, in_plane, prep.spacing_mm, strict=True)
    )
    image = np.ascontiguousarray(_resample(stack, (target[0], target[1]), order=1), np.float32)
    prepared_mask = None
    annotated = np.zeros(image.shape[0], dtype=bool)
    if mask is not None:
        mask = check_mask(mask, volume)
        mask_stack = to_stack(mask.astype(np.float32))
        resampled = _resample(mask_stack, (target[0], target[1]), order=1)
        prepared_mask = np.ascontiguousarray(resampled >= 0.5, dtype=np.uint8)
        if annotated_slices is None:
            annotated[:] = True
        else:
            annotated = _annotated(ornt, volume.shape, prep.slice_axis, annotated_slices)
    logger.debug("prepared %s -> %s slices", volume.shape, image.shape)
    return PreparedVolume(
        image=image,
        mask=prepared_mask,
        annotated=annotated,
        original_shape=volume.shape,
        affine=volume.affine,
        ornt=ornt,
        slice_axis=prep.slice_axis,
        plane_shape=plane_shape,
    )


def restore_to_grid(prepared: PreparedVolume, slices: np.ndarray) -> np.ndarray:
    """Put a prepared-space stack [S, H, W] back onto the uploaded volume's voxel grid.

    Float input (e.g. probabilities) is interpolated linearly and returned as float32;
    bool/integer input is treated as a binary mask (linear, then >= 0.5) and returned as uint8.
    """
    if slices.shape[0] != prepared.image.shape[0] or slices.ndim != 3:
        raise ValueError(f"expected [{prepared.image.shape[0]}, H, W] slices, got {slices.shape}")
    binary = not np.issubdtype(slices.dtype, np.floating)
    stack = _resample(slices.astype(np.float32, copy=False), prepared.plane_shape, order=1)
    ras = np.moveaxis(stack, 0, prepared.slice_axis)
    back = orientations.ornt_transform(_RAS, prepared.ornt)
    restored = orientations.apply_orientation(ras, back)
    if restored.shape != prepared.original_shape:
        raise RuntimeError(f"restored shape {restored.shape} != {prepared.original_shape}")
    if binary:
        return np.ascontiguousarray(restored >= 0.5, dtype=np.uint8)
    return np.ascontiguousarray(restored, dtype=np.float32)
