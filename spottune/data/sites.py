"""Scanner sites: acquisition profiles that change what a scanner changes.

A profile turns a subject (normalised T1 on the common 1 mm grid) into that site's scan: contrast
curve, multiplicative bias field, point-spread blur, its own voxel grid and orientation, Rician
noise and the scanner's integer intensity range. The brain mask is carried to the same voxel grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spottune.data.grid import FOV_MM, Grid, smooth_random_field

FWHM_PER_SIGMA = 2.3548
BIAS_SIGMA_MM = 60.0  # smoothness of the bias field: varies over ~head size


def _smoothstep(x: np.ndarray, low: float, high: float) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def contrast_t1(x: np.ndarray) -> np.ndarray:
    """Identity: the heads' own T1 contrast."""
    return x


def contrast_gamma(x: np.ndarray) -> np.ndarray:
    """Gamma 0.5: brightens CSF and grey matter, compresses grey/white contrast."""
    return np.sqrt(x)


def contrast_sigmoid(x: np.ndarray) -> np.ndarray:
    """Steep sigmoid around grey matter: dark CSF crushed, white matter and fat saturate."""
    return 1.4 / (1.0 + np.exp(-(x - 0.65) / 0.12))


def contrast_flat(x: np.ndarray) -> np.ndarray:
    """Grey and white matter pulled together (WM/GM ratio ~1.15 instead of ~1.6)."""
    return np.where(x < 0.45, x * 1.5, 0.675 + 0.25 * (x - 0.45))


def contrast_t2_like(x: np.ndarray) -> np.ndarray:
    """T2-like inversion inside the head: CSF bright, grey mid, white matter and fat dark.

    The smoothstep keeps air and bone (normalised T1 < ~0.06) dark, so the background stays dark.
    """
    return _smoothstep(x, 0.04, 0.22) * np.clip(1.25 - x, 0.05, None)


@dataclass(frozen=True)
class SiteProfile:
    """One scanner site.

    Attributes:
        name: site id used in file names and the manifest.
        description: one line, written to the manifest's "sites".
        contrast: intensity curve on normalised T1 values.
        bias_std: standard deviation of the log bias field (0.1 ~ +-10% smooth shading).
        noise: Rician noise sigma relative to white matter (normalised intensity 1).
        blur_fwhm_mm: extra Gaussian point-spread FWHM per RAS axis, mm.
        voxel_scale: site voxel size = base spacing x this, per RAS axis (thick slices etc.).
        flip_axes: RAS axes stored reversed (e.g. (0, 1) = LPS, as DICOM-based scanners write).
        intensity_max: stored integer value of normalised intensity 1.
    """

    name: str
    description: str
    contrast: Callable[[np.ndarray], np.ndarray]
    bias_std: float
    noise: float
    blur_fwhm_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    voxel_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flip_axes: tuple[int, ...] = ()
    intensity_max: float = 1000.0


SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        "siemens15",
        "reference T1: 1 mm isotropic RAS, mild bias field (8%), low Rician noise (2%)",
        contrast_t1,
        bias_std=0.08,
        noise=0.02,
        intensity_max=1000.0,
    ),
    SiteProfile(
        "ge3",
        "T1 with gamma-0.5 contrast curve (bright CSF/grey, compressed grey-white), strong "
        "bias field (25%), 1.2 mm isotropic voxels stored LPS, Rician noise 3%",
        contrast_gamma,
        bias_std=0.25,
        noise=0.03,
        voxel_scale=(1.2, 1.2, 1.2),
        flip_axes=(0, 1),
        intensity_max=3000.0,
    ),
    SiteProfile(
        "philips15",
        "T1 from sagittal 3 mm thick slices (3x1x1 mm voxels, slab blur), steep sigmoid "
        "contrast, bias field 15%, high Rician noise (6%)",
        contrast_sigmoid,
        bias_std=0.15,
        noise=0.06,
        voxel_scale=(3.0, 1.0, 1.0),
        intensity_max=250.0,
    ),
    SiteProfile(
        "philips3",
        "T2-like: tissue contrast inverted inside the head (CSF bright, white matter dark, "
        "background dark), 1 mm isotropic, bias field 10%, Rician noise 3%",
        contrast_t2_like,
        bias_std=0.10,
        noise=0.03,
        intensity_max=2000.0,
    ),
    SiteProfile(
        "siemens3",
        "T1 with flat grey/white contrast, in-plane blur (FWHM 2.5 mm), bias field 20%, "
        "Rician noise 4%, 1 mm isotropic",
        contrast_flat,
        bias_std=0.20,
        noise=0.04,
        blur_fwhm_mm=(2.5, 2.5, 0.0),
        intensity_max=1500.0,
    ),
)
SITE_NAMES: tuple[str, ...] = tuple(site.name for site in SITES)


def get_site(name: str) -> SiteProfile:
    for site in SITES:
        if site.name == name:
            return site
    raise KeyError(f"unknown site {name!r}; known: {', '.join(SITE_NAMES)}")


@dataclass(frozen=True)
class SiteScan:
    """A scan as the site stores it. image: int16 [X, Y, Z]; mask: uint8, same grid; affine 4x4."""

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def _resample_to(volume: np.ndarray, base: Grid, target: Grid) -> np.ndarray:
    """Linear resampling between two centred axis-aligned grids covering the same field of view."""
    scale = np.asarray(target.spacing) / np.asarray(base.spacing)
    offset = (target.origin - base.origin) / np.asarray(base.spacing)
    return ndimage.affine_transform(
        volume,
        scale,
        offset=offset,
        output_shape=target.shape,
        order=1,
        cval=0.0,
        output=np.float32,
    )


def _flip(
    volume: np.ndarray, affine: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Store ``axes`` reversed; the affine is updated so world positions are unchanged."""
    flipped = affine.copy()
    for axis in axes:
        volume = np.flip(volume, axis=axis)
        flipped[:3, 3] += affine[:3, axis] * (volume.shape[axis] - 1)
        flipped[:3, axis] = -affine[:3, axis]
    return np.ascontiguousarray(volume), flipped


def acquire(
    site: SiteProfile, image: np.ndarray, mask: np.ndarray, base: Grid, rng: np.random.Generator
) -> SiteScan:
    """Turn a subject (normalised float32 image and uint8 mask on ``base``) into ``site``'s scan."""
    signal = site.contrast(image).astype(np.float32)
    signal *= np.exp(smooth_random_field(base, rng, sigma_mm=BIAS_SIGMA_MM, std=site.bias_std))
    target = Grid.covering(
        FOV_MM, tuple(s * f for s, f in zip(base.spacing, site.voxel_scale, strict=True))
    )
    # Point spread: the site's own blur plus the slab/voxel profile when its voxels are coarser.
    fwhm = np.sqrt(
        np.asarray(site.blur_fwhm_mm) ** 2
        + np.maximum(np.asarray(target.spacing) ** 2 - np.asarray(base.spacing) ** 2, 0.0)
    )
    sigma = fwhm / FWHM_PER_SIGMA / np.asarray(base.spacing)
    if np.any(sigma > 0.1):
        signal = ndimage.gaussian_filter(signal, sigma, mode="constant")
    if target != base:
        signal = _resample_to(signal, base, target)
        mask = (_resample_to(mask.astype(np.float32), base, target) >= 0.5).astype(np.uint8)
    # Rician magnitude noise: |signal + n_real + i n_imag|
    real = signal + rng.normal(0.0, site.noise, signal.shape).astype(np.float32)
    imaginary = rng.normal(0.0, site.noise, signal.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    stored = np.clip(np.rint(magnitude * site.intensity_max), 0, np.iinfo(np.int16).max).astype(
        np.int16
    )
    stored, affine = _flip(stored, target.affine, site.flip_axes)
    mask, _ = _flip(np.asarray(mask, dtype=np.uint8), target.affine, site.flip_axes)
    return SiteScan(image=stored, mask=mask, affine=affine)
