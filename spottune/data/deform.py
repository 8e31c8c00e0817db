"""Subjects: smooth random spatial deformations of a head, image and brain mask warped together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spottune.data.grid import Grid, smooth_random_field
from spottune.data.heads import Head


@dataclass(frozen=True)
class DeformationSettings:
    """Ranges of the random deformation (uniform draws unless stated).

    Attributes:
        max_rotation_deg: rotation about each axis, degrees.
        max_log_scale: per-axis scale = exp(U(-m, m)) (anisotropic head proportions).
        max_shift_mm: translation per axis, mm.
        elastic_std_mm: standard deviation of the elastic displacement per axis, mm.
        elastic_sigma_mm: Gaussian smoothing width of the elastic displacement, mm.
    """

    max_rotation_deg: float = 7.0
    max_log_scale: float = 0.06
    max_shift_mm: float = 4.0
    elastic_std_mm: float = 2.5
    elastic_sigma_mm: float = 16.0


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation, product of rotations about the three axes."""
    result = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        first, second = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[first, first] = rot[second, second] = np.cos(angle)
        rot[first, second] = -np.sin(angle)
        rot[second, first] = np.sin(angle)
        result = rot @ result
    return result


def random_coordinates(
    grid: Grid, rng: np.random.Generator, settings: DeformationSettings = DeformationSettings()
) -> np.ndarray:
    """Sampling positions of a random smooth deformation (pull-back: output voxel -> input voxel).

    x_in = centre + A (x_out - centre) + shift + u(x_out), with A = rotation @ diag(scale) and u a
    smooth elastic field, all in mm, converted to voxel indices of ``grid``.

    Returns:
        float32 [3, X, Y, Z]: voxel coordinates into an array on ``grid`` for
        ``scipy.ndimage.map_coordinates``.
    """
    angles = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, 3))
    scales = np.exp(rng.uniform(-settings.max_log_scale, settings.max_log_scale, 3))
    shift = rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, 3)
    linear = _rotation(angles) @ np.diag(scales)
    axes_mm = [grid.axis_mm(a) for a in range(3)]  # world mm; the grid centre is the origin
    spacing = np.asarray(grid.spacing)
    origin = grid.origin
    coords = np.empty((3, *grid.shape), dtype=np.float32)
    for out_axis in range(3):
        position = np.float32(shift[out_axis]) + sum(
            np.float32(linear[out_axis, a])
            * axes_mm[a].astype(np.float32).reshape([-1 if b == a else 1 for b in range(3)])
            for a in range(3)
        )
        position = position + smooth_random_field(
            grid, rng, sigma_mm=settings.elastic_sigma_mm, std=settings.elastic_std_mm
        )
        coords[out_axis] = (position - origin[out_axis]) / spacing[out_axis]
    return coords


def warp(volume: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``volume`` [X, Y, Z] at ``coords`` [3, X', Y', Z'] (outside = 0), float32."""
    return ndimage.map_coordinates(
        volume.astype(np.float32, copy=False),
        coords,
        order=order,
        mode="constant",
        cval=0.0,
        output=np.float32,
    )


def make_subject(
    head: Head, rng: np.random.Generator, settings: DeformationSettings = DeformationSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """One random subject of ``head``: (image float32 [X, Y, Z], mask uint8 [X, Y, Z]) on head.grid.

    The mask is warped with the same coordinates as the image (linear, then threshold 0.5), so it
    stays aligned with the deformed anatomy.
    """
    coords = random_coordinates(head.grid, rng, settings)
    image = warp(head.image, coords)
    mask = (warp(head.mask, coords) >= 0.5).astype(np.uint8)
    return image, mask
