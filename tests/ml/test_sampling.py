"""SliceSampler: only annotated slices, fixed-size patches, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from spottune.ml.preparation import PreparedVolume
from spottune.ml.sampling import SliceSampler

SENTINEL = 7.0


def _prepared(
    n_slices: int, shape: tuple[int, int], annotated: list[int], fill: float
) -> PreparedVolume:
    image = np.full((n_slices, *shape), SENTINEL, dtype=np.float32)
    mask = np.zeros((n_slices, *shape), dtype=np.uint8)
    flags = np.zeros(n_slices, dtype=bool)
    flags[annotated] = True
    image[flags] = fill
    mask[flags] = 1
    return PreparedVolume(
        image=image,
        mask=mask,
        annotated=flags,
        original_shape=(n_slices, *shape),
        affine=np.eye(4),
        ornt=np.array([[0, 1], [1, 1], [2, 1]], float),
        slice_axis=0,
        plane_shape=shape,
    )


def test_draws_only_annotated_slices() -> None:
    volumes = [_prepared(10, (20, 24), [1, 5], 0.25), _prepared(6, (40, 40), [3], 0.5)]
    sampler = SliceSampler(volumes, patch_size=16, batch_size=8, seed=0)
    assert sampler.n_annotated_slices == 3
    seen = set()
    for _ in range(50):
        x, y = sampler.next_batch()
        assert x.shape == y.shape == (8, 1, 16, 16)
        assert x.dtype == y.dtype == np.float32
        assert not np.any(x == SENTINEL)
        assert np.all(y == 1)
        seen.update(np.unique(x).tolist())
    assert seen == {0.25, 0.5}


def test_pads_small_slices_with_zeros() -> None:
    sampler = SliceSampler([_prepared(3, (5, 7), [0, 1, 2], 0.5)], 12, 4, seed=1)
    x, y = sampler.next_batch()
    assert x.shape == (4, 1, 12, 12)
    assert (x == 0.5).sum(axis=(1, 2, 3)).tolist() == [35] * 4
    assert set(np.unique(x).tolist()) == {0.0, 0.5}
    assert np.array_equal(x == 0.5, y == 1)


def test_deterministic_given_seed() -> None:
    rng = np.random.default_rng(0)
    volume = _prepared(8, (30, 30), [0, 2, 4, 6], 0.1)
    volume.image[:] = rng.random(volume.image.shape, dtype=np.float32)
    first = SliceSampler([volume], 16, 4, seed=5)
    second = SliceSampler([volume], 16, 4, seed=5)
    other = SliceSampler([volume], 16, 4, seed=6)
    a, b, c = first.next_batch()[0], second.next_batch()[0], other.next_batch()[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_refuses_volumes_without_annotation() -> None:
    with pytest.raises(ValueError, match="no annotated"):
        SliceSampler([_prepared(4, (8, 8), [], 0.5)], 8, 2, seed=0)
