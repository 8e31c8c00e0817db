"""Fixtures for the model/training tests: tiny prepared volumes built from synthetic phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spottune.ml.preparation import PreparedVolume
from spottune.ml.synthetic import make_phantom

TINY_SHAPE = (32, 32, 12)  # phantom voxels; slices are 32 x 32


def prepared_phantom(
    seed: int, *, invert: bool = False, every: int = 1, shape: tuple[int, int, int] = TINY_SHAPE
) -> PreparedVolume:
    """A phantom as prepared slices [S, 32, 32] in [0, 1]; every `every`-th slice annotated.

    invert=True flips intensities (1 - x): a strong, purely low-level domain shift.
    """
    image, mask = make_phantom(shape, seed=seed, site="a")
    slices = np.moveaxis(image, 2, 0)
    slices = np.clip(slices / np.percentile(slices, 99), 0.0, 1.0).astype(np.float32)
    if invert:
        slices = 1.0 - slices
    annotated = np.zeros(slices.shape[0], dtype=bool)
    annotated[::every] = True
    return PreparedVolume(
        image=slices,
        mask=np.moveaxis(mask, 2, 0).astype(np.uint8),
        annotated=annotated,
        original_shape=shape,
        affine=np.eye(4),
        ornt=np.array([[0, 1], [1, 1], [2, 1]], dtype=float),
        slice_axis=2,
        plane_shape=(shape[0], shape[1]),
    )


@pytest.fixture(scope="session")
def source_volumes() -> list[PreparedVolume]:
    return [prepared_phantom(seed) for seed in (1, 2)]


@pytest.fixture(scope="session")
def target_volumes() -> list[PreparedVolume]:
    return [prepared_phantom(seed, invert=True, every=3) for seed in (3,)]


# Two cores are shared by several test runs: one intra-op thread avoids OpenMP spin-waiting,
# which otherwise makes these tiny models ~10x slower.
torch.set_num_threads(1)
