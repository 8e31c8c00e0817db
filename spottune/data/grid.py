"""Axis-aligned RAS voxel grids centred on the world origin, and smooth random fields on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Field of view (mm, RAS order: left-right, posterior-anterior, inferior-superior) of every scan.
# Big enough for the largest brain mask (fsaverage, ~159 x 195 x 172 mm) under the subject
# deformations, with the neck cut off as a real scanner would.
FOV_MM: tuple[float, float, float] = (176.0, 208.0, 176.0)


@dataclass(frozen=True)
class Grid:
    """A voxel grid in RAS+ world space whose centre is at world (0, 0, 0).

    Attributes:
        shape: voxels per axis.
        spacing: mm per voxel along each axis.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def covering(cls, fov_mm: tuple[float, ...], spacing: tuple[float, ...]) -> Grid:
        """The grid of ``spacing`` mm voxels that covers ``fov_mm`` (rounded to whole voxels)."""
        shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov_mm, spacing, strict=True))
        return cls(shape=shape, spacing=tuple(float(s) for s in spacing))  # type: ignore[arg-type]

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of voxel (0, 0, 0)."""
        return -(np.asarray(self.shape) - 1) / 2.0 * np.asarray(self.spacing)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) matrix."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axis_mm(self, axis: int) -> np.ndarray:
        """World coordinate (mm) of each voxel centre along ``axis``, shape [shape[axis]]."""
        return self.origin[axis] + np.arange(self.shape[axis]) * self.spacing[axis]


def smooth_random_field(
    grid: Grid,
    rng: np.random.Generator,
    sigma_mm: float,
    std: float,
    control_mm: float | None = None,
) -> np.ndarray:
    """A smooth random scalar field on ``grid``: Gaussian bumps with random weights.

    A sum of separable Gaussian kernels (width ``sigma_mm``) centred on a coarse lattice of
    control points every ``control_mm`` (default sigma / 2) with standard-normal weights, rescaled
    to have standard deviation ``std`` over the grid. Being separable, it costs three small matrix
    products instead of a full-volume Gaussian filter.

    Returns:
        float32 array of ``grid.shape``, mean ~0 over the grid.
    """
    step = control_mm if control_mm is not None else sigma_mm / 2.0
    bases = []
    for axis in range(3):
        coords = grid.axis_mm(axis)
        margin = 2.0 * sigma_mm
        centres = np.arange(coords[0] - margin, coords[-1] + margin + step, step)
        bases.append(np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / sigma_mm) ** 2))
    weights = rng.standard_normal((bases[0].shape[1], bases[1].shape[1], bases[2].shape[1]))
    field = np.einsum("abc,zc->abz", weights, bases[2])
    field = np.einsum("abz,yb->ayz", field, bases[1])
    field = np.tensordot(bases[0], field, axes=([1], [0]))
    field -= field.mean()
    scale = field.std()
    if scale > 0:
        field *= std / scale
    return field.astype(np.float32)
