"""Scoring on the common 1 mm reference grid.

Every site stores its scans on its own voxel grid (1.2 mm LPS, 3x1x1 mm sagittal, ...). Scoring
each prediction on its scan's grid would compare sites at different resolutions (a 1 mm surface
tolerance on a 1.2 mm grid squashes every difference), so every prediction is carried to the
subject's reference mask on the data's common grid (`reference_mask` in the manifest) and scored
there. The *ceiling* is the same round trip applied to the reference itself: the site's mask
through the model's grid and back, scored against the reference; no prediction can do better.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from spottune.ml.config import Preprocessing
from spottune.ml.metrics import score_masks
from spottune.ml.preparation import prepare_volume, restore_to_grid
from spottune.ml.volumes import Volume

TOLERANCES_MM = (1.0, 2.0)
MARGIN = 4  # voxels kept around both masks when cropping for the surface metrics


@dataclass(frozen=True)
class Reference:
    """A subject's mask on the common grid: mask [X, Y, Z] bool, affine voxel -> RAS mm."""

    mask: np.ndarray
    affine: np.ndarray

    @classmethod
    def load(cls, path: str) -> Reference:
        image = nib.load(path)
        return cls(np.asarray(image.dataobj) > 0, image.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(0))
        return (float(s[0]), float(s[1]), float(s[2]))


def to_reference_grid(mask: np.ndarray, affine: np.ndarray, reference: Reference) -> np.ndarray:
    """A binary mask on a scan's grid (`affine`), carried onto the reference grid: linear
    interpolation of the 0/1 mask, then >= 0.5 (the rule restore_to_grid uses)."""
    to_scan = np.linalg.inv(affine) @ reference.affine  # reference voxel -> scan voxel
    if np.allclose(to_scan, np.eye(4)) and mask.shape == reference.mask.shape:
        return mask.astype(bool)
    out = np.zeros(reference.mask.shape, dtype=bool)
    found = np.argwhere(mask)
    if not found.size:
        return out
    # Only the mask's bounding box (plus a voxel) can land on foreground: resample just that box.
    lo, hi = found.min(0) - 1, found.max(0) + 1
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    in_reference = (np.linalg.inv(to_scan) @ corners.T).T[:, :3]
    start = np.maximum(np.floor(in_reference.min(0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(in_reference.max(0)).astype(int) + 2, reference.mask.shape)
    if np.any(stop <= start):
        return out
    offset = to_scan[:3, :3] @ start + to_scan[:3, 3]
    resampled = ndimage.affine_transform(
        mask.astype(np.float32), to_scan[:3, :3], offset=offset,
        output_shape=tuple(int(n) for n in stop - start), order=1, mode="constant", cval=0.0,
    )
    out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = resampled >= 0.5
    return out


def score(predicted: np.ndarray, reference: Reference) -> dict[str, float]:
    """Dice, surface Dice at 1 and 2 mm and HD95 of a mask already on the reference grid."""
    both = np.argwhere(predicted | reference.mask)
    pred, ref = predicted, reference.mask
    if both.size:
        lo, hi = np.maximum(both.min(0) - MARGIN, 0), both.max(0) + MARGIN + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        pred, ref = predicted[box], reference.mask[box]
    scores = score_masks(pred, ref, reference.spacing, TOLERANCES_MM)
    return {
        "dice": scores.dice,
        "sdice": scores.surface_dice[1.0],
        "sdice_2mm": scores.surface_dice[2.0],
        "hd95": scores.hd95,
    }


def score_prediction(mask: np.ndarray, volume: Volume, reference: Reference) -> dict[str, float]:
    """Scores of a prediction on the scan's grid, carried to the reference grid."""
    return score(to_reference_grid(mask, volume.affine, reference), reference)


def ceiling(volume: Volume, site_mask: np.ndarray, prep: Preprocessing,
            reference: Reference) -> dict[str, float]:
    """Scores of the site's own mask sent through the model's grid and back: the round trip's
    loss, i.e. the best any model of this resolution can reach on this scan."""
    prepared = prepare_volume(volume, prep, site_mask)
    assert prepared.mask is not None
    back = restore_to_grid(prepared, prepared.mask.astype(np.uint8))
    return score_prediction(back, volume, reference)
