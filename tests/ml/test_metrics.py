"""Metrics against DeepMind's surface-distance package (the paper's definition)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from spottune.ml.metrics import dice, hausdorff95, score_masks, surface_dice

surface_distance = pytest.importorskip("surface_distance")

SPACINGS = [(1.0, 1.0, 1.0), (1.0, 1.2, 3.0), (0.5, 0.95, 0.95), (2.0, 0.7, 1.3)]


def _blob(shape: tuple[int, int, int], seed: int, threshold: float = 0.55) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma=3)
    return field > np.quantile(field, threshold)


def _reference(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    return surface_distance.compute_surface_distances(a, b, spacing)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_surface_metrics_match_reference(spacing: tuple[float, float, float], seed: int) -> None:
    a = _blob((28, 30, 22), seed)
    b = _blob((28, 30, 22), seed + 100, threshold=0.5)
    ref = _reference(a, b, spacing)
    for tolerance in (0.5, 1.0, 2.0):
        expected = surface_distance.compute_surface_dice_at_tolerance(ref, tolerance)
        assert surface_dice(a, b, spacing, tolerance) == pytest.approx(expected, abs=1e-6)
    expected_hd = surface_distance.compute_robust_hausdorff(ref, 95)
    assert hausdorff95(a, b, spacing) == pytest.approx(expected_hd, abs=1e-6)


def test_surface_dice_of_shifted_masks_matches_reference() -> None:
    a = np.zeros((20, 20, 20), bool)
    a[5:15, 4:14, 6:16] = True
    b = np.roll(a, 1, axis=0)
    spacing = (1.0, 1.2, 3.0)
    ref = _reference(a, b, spacing)
    assert surface_dice(a, b, spacing, 1.0) == pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(ref, 1.0), abs=1e-6
    )


def test_identical_masks_are_perfect() -> None:
    a = _blob((16, 16, 16), 3)
    assert dice(a, a) == 1.0
    assert surface_dice(a, a, (1.0, 1.0, 2.0)) == 1.0
    assert hausdorff95(a, a, (1.0, 1.0, 2.0)) == 0.0


def test_empty_masks() -> None:
    empty = np.zeros((8, 8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    assert dice(empty, empty) == 1.0
    assert surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert hausdorff95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(full, empty) == 0.0
    assert surface_dice(full, empty, (1, 1, 1)) == 0.0
    assert surface_dice(empty, full, (1, 1, 1)) == 0.0
    assert math.isinf(hausdorff95(full, empty, (1, 1, 1)))


def test_dice_value_and_shape_check() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[0, 0, :2] = 1
    b[0, 0, 1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dice(a, np.zeros((4, 4, 5)))


def test_score_masks_agrees_with_the_single_metrics() -> None:
    rng = np.random.default_rng(0)
    reference = np.zeros((30, 32, 28), dtype=bool)
    reference[5:25, 6:26, 4:22] = True
    predicted = np.roll(reference, 2, axis=0) | (rng.random(reference.shape) > 0.995)
    spacing = (1.0, 1.2, 2.0)
    scores = score_masks(predicted, reference, spacing, (1.0, 2.0))
    assert scores.dice == pytest.approx(dice(predicted, reference))
    for tolerance in (1.0, 2.0):
        assert scores.surface_dice[tolerance] == pytest.approx(
            surface_dice(reference, predicted, spacing, tolerance))
    assert scores.hd95 == pytest.approx(hausdorff95(reference, predicted, spacing))
    assert scores.surface_dice[1.0] < scores.surface_dice[2.0] < 1.0
@pytest.mark.parametrize("spacing", SPACINGS[:2])
def test_score_masks_is_the_reference_at_every_tolerance(
    spacing: tuple[float, float, float]
) -> None:
    predicted = _blob((24, 26, 20), 5)
    reference = _blob((24, 26, 20), 6, threshold=0.5)
    ref = _reference(reference, predicted, spacing)
    score = score_masks(predicted, reference, spacing, tolerances_mm=(1.0, 2.0))
    assert score.dice == pytest.approx(dice(predicted, reference))
    assert set(score.surface_dice) == {1.0, 2.0}
    for tolerance, value in score.surface_dice.items():
        expected = surface_distance.compute_surface_dice_at_tolerance(ref, tolerance)
        assert value == pytest.approx(expected, abs=1e-6)
    assert score.hd95 == pytest.approx(surface_distance.compute_robust_hausdorff(ref, 95),
                                       abs=1e-6)


def test_score_masks_of_an_empty_prediction() -> None:
    reference = _blob((12, 12, 12), 1)
    score = score_masks(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert score.dice == 0.0 and score.surface_dice == {1.0: 0.0, 2.0: 0.0}
    assert math.isinf(score.hd95)
