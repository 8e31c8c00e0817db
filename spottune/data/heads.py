"""Heads on the common grid: the real registry heads (reoriented, resampled, cropped) or phantoms.

Every head is brought to one RAS+ grid (see ``grid.FOV_MM``) centred on its brain, with intensities
normalised so that the 99th percentile inside the brain is 1 (white matter ~0.9-1, grey matter ~0.6,
CSF ~0.2, scalp fat > 1). Site profiles are defined on this scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from spottune.data.fetch import HeadFiles
from spottune.data.grid import Grid

logger = logging.getLogger(__name__)

BRAIN_PERCENTILE = 99.0
MAX_INTENSITY = 3.0  # normalised units; clips rare hot voxels of the templates


@dataclass(frozen=True)
class Head:
    """One head on the common grid.

    Attributes:
        name: "oasis", "mni152", "fsaverage", or "phantom<N>".
        image: float32 [X, Y, Z], normalised T1 intensities (see module docstring).
        mask: uint8 [X, Y, Z], 1 = brain.
        grid: the grid both arrays live on (RAS+, centred on the brain).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    grid: Grid


def _normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    reference = float(np.percentile(image[mask > 0], BRAIN_PERCENTILE))
    if reference <= 0:
        raise ValueError("brain region has no positive intensities")
    return np.clip(image / reference, 0.0, MAX_INTENSITY).astype(np.float32)


def load_registry_head(files: HeadFiles, grid: Grid) -> Head:
    """Reorient to RAS, resample to ``grid.spacing`` and crop/pad to ``grid`` around the brain.

    One affine resampling does all three: each grid voxel is mapped through world space into the
    source voxel array. The brain's bounding-box centre lands on the grid centre.
    """
    image_nii: nib.spatialimages.SpatialImage = nib.load(files.image)  # type: ignore[assignment]
    mask_nii: nib.spatialimages.SpatialImage = nib.load(files.mask)  # type: ignore[assignment]
    image = np.asarray(image_nii.dataobj, dtype=np.float32)
    mask = np.asarray(mask_nii.dataobj, dtype=np.float32) > files.source.mask_threshold
    if image.shape != mask.shape or not np.allclose(image_nii.affine, mask_nii.affine, atol=1e-3):
        raise ValueError(f"{files.source.head}: image and mask grids differ")
    source_affine = image_nii.affine
    corners = np.argwhere(mask)
    centre_voxel = (corners.min(axis=0) + corners.max(axis=0)) / 2.0
    centre_world = (source_affine @ np.r_[centre_voxel, 1.0])[:3]
    # grid voxel -> world (grid affine, shifted so its centre sits on the brain) -> source voxel
    to_world = grid.affine.copy()
    to_world[:3, 3] += centre_world
    to_source = np.linalg.inv(source_affine) @ to_world
    source_spacing = np.sqrt((source_affine[:3, :3] ** 2).sum(axis=0))
    # Anti-aliasing before downsampling (quick mode): Gaussian PSF of the coarser voxel.
    sigma = (
        np.sqrt(np.maximum(np.max(grid.spacing) ** 2 - source_spacing**2, 0.0))
        / 2.355
        / source_spacing
    )
    smoothed = ndimage.gaussian_filter(image, sigma) if np.any(sigma > 0.3) else image
    kwargs = {"matrix": to_source[:3, :3], "offset": to_source[:3, 3], "output_shape": grid.shape}
    resampled = ndimage.affine_transform(smoothed, order=1, cval=0.0, **kwargs)
    resampled_mask = ndimage.affine_transform(mask.astype(np.float32), order=1, cval=0.0, **kwargs)
    brain = (resampled_mask >= 0.5).astype(np.uint8)
    touching = [axis for axis in range(3) if brain.take([0, -1], axis=axis).any()]
    if touching:
        logger.info(
            "%s: brain mask reaches the field of view along axes %s", files.source.head, touching
        )
    return Head(name=files.source.head, image=_normalise(resampled, brain), mask=brain, grid=grid)


def _ellipsoid_distance(coords: list[np.ndarray], radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised ellipsoid 'radius' (1 on the surface) at each voxel."""
    return np.sqrt(sum((c / r) ** 2 for c, r in zip(coords, radii, strict=True)))


def make_phantom_head(index: int, grid: Grid, seed: int = 0) -> Head:
    """A built-in ellipsoid head (no download): scalp, skull, CSF, cortex, white matter, ventricles.

    Phantom ``index`` (0, 1, 2, ...) picks its proportions; the brain mask is the brain tissue
    (cortex + white matter + ventricles), as in the real masks. Tissue values follow the normalised
    T1 scale of the real heads. Units: grid mm.
    """
    rng = np.random.default_rng([seed, 7919, index])
    coords = np.meshgrid(*(grid.axis_mm(a) for a in range(3)), indexing="ij", sparse=True)
    fov = np.asarray(grid.shape) * np.asarray(grid.spacing)
    rx, ry, rz = (float(r) for r in fov * (0.36 + 0.03 * rng.uniform(-1, 1, 3)))
    brain_radii = (rx, ry, rz)
    # a wobbly grey/white boundary so the deformations have structure to move
    wobble = rng.uniform(0.05, 0.08) * np.sin(coords[0] / 9.0 + index) * np.cos(coords[1] / 11.0)
    r_brain = _ellipsoid_distance(list(coords), brain_radii)
    image = np.zeros(grid.shape, dtype=np.float32)
    image[r_brain < 1.30] = 1.4  # scalp fat
    image[r_brain < 1.20] = 0.05  # skull
    image[r_brain < 1.08] = 0.2  # CSF
    image[r_brain < 1.0] = 0.6  # cortex
    image[r_brain + wobble < 0.85] = 0.95  # white matter
    ventricle = _ellipsoid_distance(
        [coords[0] - 0.0, coords[1] + 0.1 * brain_radii[1], coords[2] - 0.1 * brain_radii[2]],
        (0.12 * brain_radii[0], 0.35 * brain_radii[1], 0.2 * brain_radii[2]),
    )
    image[ventricle < 1.0] = 0.2
    image = ndimage.gaussian_filter(image, 1.0 / np.asarray(grid.spacing)).astype(np.float32)
    mask = (r_brain < 1.0).astype(np.uint8)
    return Head(name=f"phantom{index + 1}", image=image, mask=mask, grid=grid)
