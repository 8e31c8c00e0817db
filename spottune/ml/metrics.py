"""Segmentation metrics on 3D binary masks: Dice, surface Dice and the 95th-percentile Hausdorff.

Surface metrics follow DeepMind's surface-distance package (the definition used by the SpotTUnet
paper): the surface is made of marching-cubes surface elements ("surfels") located at the corners
of voxels, each weighted by its area in mm^2 for the given (possibly anisotropic) spacing, and
distances are Euclidean distance transforms in mm between the two surfaces' surfel positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from surface_distance.lookup_tables import (
    ENCODE_NEIGHBOURHOOD_3D_KERNEL,
    create_table_neighbour_code_to_surface_area,
)

_ENCODE_KERNEL = ENCODE_NEIGHBOURHOOD_3D_KERNEL.astype(np.uint8)
_FULL = 255


@lru_cache(maxsize=32)
def _surfel_area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface inside a 2x2x2 neighbourhood, for each of the 256 codes.

    The marching-cubes table is DeepMind's own (the `surface-distance` package), so surface Dice
    here is the paper's definition and not an approximation of it.
    """
    return np.asarray(create_table_neighbour_code_to_surface_area(spacing_mm), dtype=float)


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name}: expected a 3D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Volumetric Dice of two binary masks of the same shape; 1.0 when both are empty."""
    a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distances (mm) from every surfel of one mask to the other mask's surface, with surfel areas.

    Args:
        a, b: binary masks [X, Y, Z] (a is the reference).
        spacing_mm: voxel size along each axis, mm.

    Returns:
        (dist_a_to_b, area_a, dist_b_to_a, area_b), each sorted by (distance, area); distances are
        inf when the other mask is empty, arrays are empty when this mask is.
    """
    a, b = _as_bool(a, "a"), _as_bool(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3:
        raise ValueError(f"spacing_mm must have 3 values, got {spacing_mm}")
    union = a | b
    if not union.any():
        empty = np.zeros(0)
        return empty, empty, empty, empty
    nonzero = np.nonzero(union)
    low = [int(idx.min()) for idx in nonzero]
    high = [int(idx.max()) + 1 for idx in nonzero]
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    areas = _surfel_area_table((spacing[0], spacing[1], spacing[2]))

    def surface(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One voxel of zero padding on the high side gives the "full" 2x2x2 correlation.
        crop = np.zeros([hi - lo + 1 for lo, hi in zip(low, high, strict=True)], dtype=np.uint8)
        crop[:-1, :-1, :-1] = mask[box]
        codes = ndimage.correlate(crop, _ENCODE_KERNEL, mode="constant", cval=0)
        return (codes != 0) & (codes != _FULL), areas[codes]

    border_a, area_map_a = surface(a)
    border_b, area_map_b = surface(b)

    def distances(border: np.ndarray, to: np.ndarray) -> np.ndarray:
        # Nearest border-voxel centre of the other mask, in mm: what a Euclidean distance
        # transform of ~to gives at `border`, but without transforming the whole box.
        points = np.argwhere(border) * np.asarray(spacing)
        if not to.any():
            return np.full(len(points), np.inf)
        found, _ = cKDTree(np.argwhere(to) * np.asarray(spacing)).query(points)
        return np.asarray(found, dtype=np.float64)

    def ordered(dist: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((area, dist))
        return dist[order], area[order]

    d_ab, area_a = ordered(distances(border_a, border_b), area_map_a[border_a])
    d_ba, area_b = ordered(distances(border_b, border_a), area_map_b[border_b])
    return d_ab, area_a, d_ba, area_b


def surface_dice(
    a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 1.0
) -> float:
    """Surface Dice at `tolerance_mm`: the share of both surfaces' area lying within tolerance of
    the other surface. 1.0 when both masks are empty, 0.0 when exactly one is."""
    d_ab, area_a, d_ba, area_b = surface_distances(a, b, spacing_mm)
    total = float(area_a.sum() + area_b.sum())
    if total == 0.0:
        return 1.0 if not (np.any(a) or np.any(b)) else 0.0
    if area_a.size == 0 or area_b.size == 0:
        return 0.0
    close = area_a[d_ab <= tolerance_mm].sum() + area_b[d_ba <= tolerance_mm].sum()
    return float(close / total)


def _percentile_distance(dist: np.ndarray, area: np.ndarray, percent: float) -> float:
    if dist.size == 0:
        return float("inf")
    cumulative = np.cumsum(area) / np.sum(area)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(dist[min(index, dist.size - 1)])


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Symmetric 95th-percentile (surfel-area weighted) Hausdorff distance in mm.

    0.0 when both masks are empty; inf when exactly one is empty (there is no surface to measure
    against), so callers aggregating over scans should report such cases separately.
    """
    d_ab, area_a, d_ba, area_b = surface_distances(a, b, spacing_mm)
    if area_a.size == 0 and area_b.size == 0:
        return 0.0
    return max(_percentile_distance(d_ab, area_a, 95.0), _percentile_distance(d_ba, area_b, 95.0))


@dataclass(frozen=True)
class MaskScores:
    """Agreement of a predicted mask with a reference. surface_dice: tolerance (mm) -> value."""

    dice: float
    surface_dice: dict[float, float]
    hd95: float


def score_masks(
    predicted: np.ndarray,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float] = (1.0, 2.0),
) -> MaskScores:
    """Dice, surface Dice at each tolerance and HD95 (mm) of `predicted` against `reference`.

    Both masks [X, Y, Z] on one grid of `spacing_mm` voxels. Surface distances are computed once
    for all the surface metrics.
    """
    predicted, reference = _as_bool(predicted, "predicted"), _as_bool(reference, "reference")
    d_ab, area_a, d_ba, area_b = surface_distances(reference, predicted, spacing_mm)
    total = float(area_a.sum() + area_b.sum())
    surface: dict[float, float] = {}
    for tolerance in tolerances_mm:
        if total == 0.0:
            value = 1.0 if not (reference.any() or predicted.any()) else 0.0
        elif area_a.size == 0 or area_b.size == 0:
            value = 0.0
        else:
            close = area_a[d_ab <= tolerance].sum() + area_b[d_ba <= tolerance].sum()
            value = float(close / total)
        surface[float(tolerance)] = value
    if area_a.size == 0 and area_b.size == 0:
        hd95 = 0.0
    else:
        hd95 = max(_percentile_distance(d_ab, area_a, 95.0),
                   _percentile_distance(d_ba, area_b, 95.0))
    return MaskScores(dice(predicted, reference), surface, hd95)
