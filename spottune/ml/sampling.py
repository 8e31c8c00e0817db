"""Random training patches drawn only from annotated slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spottune.ml.preparation import PreparedVolume


class SliceSampler:
    """Draws batches of random square patches from the annotated slices of prepared volumes.

    Every annotated slice of every volume is equally likely. A slice smaller than the patch is
    zero-padded (centred) before the random crop. Batches are deterministic given `seed`.

    Args:
        volumes: prepared volumes, each with a mask.
        patch_size: side P of the square patches, pixels.
        batch_size: patches per batch B.
        seed: seed of the sampler's own random generator.
    """

    def __init__(
        self, volumes: Sequence[PreparedVolume], patch_size: int, batch_size: int, seed: int
    ) -> None:
        if patch_size < 1 or batch_size < 1:
            raise ValueError("patch_size and batch_size must be positive")
        self._volumes = list(volumes)
        self._index: list[tuple[int, int]] = []
        for v_index, volume in enumerate(self._volumes):
            if volume.mask is None:
                if volume.annotated.any():
                    raise ValueError(f"volume {v_index} has annotated slices but no mask")
                continue
            self._index.extend((v_index, int(s)) for s in np.flatnonzero(volume.annotated))
        if not self._index:
            raise ValueError("no annotated slices to sample from")
        self.patch_size = patch_size
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)

    @property
    def n_annotated_slices(self) -> int:
        return len(self._index)

    def _patch(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Random P x P crop of one slice pair [H, W] (zero-padded where the slice is smaller)."""
        size = self.patch_size
        pads = [
            (max(0, size - n) // 2, max(0, size - n) - max(0, size - n) // 2) for n in image.shape
        ]
        if any(before or after for before, after in pads):
            image = np.pad(image, pads)
            mask = np.pad(mask, pads)
        top = int(self._rng.integers(0, image.shape[0] - size + 1))
        left = int(self._rng.integers(0, image.shape[1] - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return image[window], mask[window]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (x, y): float32 [B, 1, P, P] images and binary targets."""
        size = self.patch_size
        x = np.zeros((self.batch_size, 1, size, size), dtype=np.float32)
        y = np.zeros_like(x)
        picks = self._rng.integers(0, len(self._index), size=self.batch_size)
        for row, pick in enumerate(picks):
            v_index, s = self._index[int(pick)]
            volume = self._volumes[v_index]
            assert volume.mask is not None  # guaranteed by the index built in __init__
            x[row, 0], y[row, 0] = self._patch(volume.image[s], volume.mask[s])
        return x, y
