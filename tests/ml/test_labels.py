"""Label maps -> brain masks: parsing the label choice and binarising with clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from spottune.ml.labels import LabelError, parse_labels

ASEG_LIKE = np.array([[0, 2, 3], [41, 42, 4], [0, 255, 2]], dtype=np.int32)


@pytest.mark.parametrize(
    ("spec", "foreground"),
    [
        ("255", [[0, 0, 0], [0, 0, 0], [0, 1, 0]]),
        ("1-255", [[0, 1, 1], [1, 1, 1], [0, 1, 1]]),
        ("2,3,41,42", [[0, 1, 1], [1, 1, 0], [0, 0, 1]]),
        (" 2, 3 ,40-42 ", [[0, 1, 1], [1, 1, 0], [0, 0, 1]]),
    ],
)
def test_labels_choose_the_foreground(spec: str, foreground: list[list[int]]) -> None:
    from spottune.ml.labels import binarize

    assert np.array_equal(binarize(ASEG_LIKE, parse_labels(spec)), np.array(foreground, bool))


def test_without_a_choice_one_nonzero_value_is_binary() -> None:
    from spottune.ml.labels import binarize

    for k in (1, 255, 7.0):
        mask = np.array([0, k, k, 0], dtype=np.float32 if isinstance(k, float) else np.uint8)
        assert binarize(mask, None).tolist() == [False, True, True, False]
    assert not binarize(np.zeros(4, np.uint8), None).any()


def test_a_label_map_without_a_choice_says_how_to_choose() -> None:
    from spottune.ml.labels import binarize

    with pytest.raises(LabelError) as error:
        binarize(ASEG_LIKE, None)
    message = str(error.value)
    assert "6 labels (2, 3, 4, 41, 42, 255)" in message
    assert "mask_labels=2,3,4,41" in message and "mask_labels=2-255" in message


@pytest.mark.parametrize(
    ("mask", "spec", "words"),
    [
        (ASEG_LIKE, "17", "no voxel carries a label in mask_labels=17"),
        (np.array([0.0, 0.5, 1.0]), None, "non-integer values"),
        (np.array([0.0, np.nan]), None, "NaN"),
    ],
)
def test_refusals_name_the_problem(mask: np.ndarray, spec: str | None, words: str) -> None:
    from spottune.ml.labels import binarize

    with pytest.raises(LabelError, match=words):
        binarize(mask, parse_labels(spec))


@pytest.mark.parametrize(
    ("spec", "words"),
    [("a", "not an integer"), ("5-2", "is empty"), ("-3", "not an integer"), (",", "no label"),
     ("1" * 2000, "at most")],
)
def test_malformed_choices_are_refused(spec: str, words: str) -> None:
    with pytest.raises(LabelError, match=words):
        parse_labels(spec)
    assert parse_labels("  ") is None and parse_labels(None) is None
