"""Preparing a volume for a 2D slice model, and putting predictions back on its grid.

A volume is prepared by reorienting it to canonical RAS, taking slices along the configured RAS
axis, resampling each slice in-plane to the model's spacing and scaling intensities to [0, 1].
Slices are never resampled through-plane, so every uploaded slice maps to exactly one prepared
slice and a predicted stack can be put back onto the upload's own voxel grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations
from scipy import ndimage

from spottune.ml.config import Preprocessing
from spottune.ml.volumes import Volume, VolumeError, check_mask

logger = logging.getLogger(__name__)

_RESAMPLE_CHUNK = 64  # slices per interpolation call (bounds temporary memory)
_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


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
