"""Tiny synthetic head phantoms for tests and demos (no downloads).

A phantom is an ellipsoidal head: scalp, a skull shell, a CSF rim and a brain made of two tissue
classes (grey and white matter) with smooth random boundaries. The brain (grey + white matter) is
the segmentation target. Site "a" has a T1-like contrast; site "b" a T2-like contrast with a
stronger bias field and more noise, so a model trained on "a" degrades on "b".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from spottune.ml.volumes import save_mask

Site = Literal["a", "b"]


@dataclass(frozen=True)
class _Contrast:
    """Mean intensity per tissue, bias-field strength and noise level (fractions of max)."""

    scalp: float
    skull: float
    csf: float
    grey: float
    white: float
    bias: float
    noise: float


_SITES: dict[str, _Contrast] = {
    "a": _Contrast(scalp=0.55, skull=0.08, csf=0.15, grey=0.5, white=0.8, bias=0.1, noise=0.03),
    "b": _Contrast(scalp=0.3, skull=0.05, csf=0.9, grey=0.6, white=0.35, bias=0.35, noise=0.07),
}


def _smooth_field(grid: list[np.ndarray], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A low-frequency random field on the normalised grid (sum of a few random cosines)."""
    field = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=np.float32)
    for _ in range(4):
        freq = rng.uniform(0.5, 2.0, size=3)
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(f * g for f, g in zip(freq, grid, strict=True)) * np.pi + phase
        field += np.cos(arg).astype(np.float32)
    return field * (amplitude / 4)


def make_phantom(
    shape: tuple[int, int, int] = (32, 32, 24), seed: int = 0, site: Site = "a"
) -> tuple[np.ndarray, np.ndarray]:
    """Make a phantom head.

    Returns:
        image: float32 [X, Y, Z], intensities roughly in [0, 1000].
        mask: uint8 [X, Y, Z], 1 inside the brain.
    """
    if site not in _SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {sorted(_SITES)}")
    contrast = _SITES[site]
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.04, 0.04, size=3)
    radii = rng.uniform(0.8, 0.9, size=3)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    grid = list(np.meshgrid(*axes, indexing="ij", sparse=True))
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii, strict=True)))
    brain_r = 0.72 + _smooth_field(grid, rng, 0.05)
    white_r = 0.45 + _smooth_field(grid, rng, 0.08)

    image = np.zeros(shape, dtype=np.float32)
    image[r < 1.0] = contrast.scalp
    image[r < 0.9] = contrast.skull
    image[r < 0.8] = contrast.csf
    brain = r < brain_r
    image[brain] = contrast.grey
    image[r < white_r] = contrast.white

    bias = 1.0 + contrast.bias * sum(
        g * w for g, w in zip(grid, rng.uniform(-1, 1, 3), strict=True)
    )
    image = image * bias + rng.normal(0.0, contrast.noise, size=shape).astype(np.float32)
    image = np.clip(image, 0.0, None) * 1000.0
    return image.astype(np.float32), brain.astype(np.uint8)


def write_phantom(
    image_path: Path,
    mask_path: Path,
    *,
    shape: tuple[int, int, int] = (32, 32, 24),
    seed: int = 0,
    site: Site = "a",
    affine: np.ndarray | None = None,
) -> None:
    """Write a phantom image (float32 NIfTI/MGH by suffix) and its brain mask (uint8 .nii.gz)."""
    image, mask = make_phantom(shape, seed=seed, site=site)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    path = str(image_path)
    if path.endswith(".mgz"):
        nib.save(nib.MGHImage(image, affine), path)
    else:
        nib.save(nib.Nifti1Image(image, affine), path)
    save_mask(mask, affine, Path(mask_path))
