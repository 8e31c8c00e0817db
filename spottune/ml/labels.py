"""Label maps -> binary brain masks: which voxel values are the foreground.

Annotation tools write masks in many ways: 0/1, 0/255, or a full label map (FreeSurfer's aseg
has dozens of structures). A mask is binarised here, either by an explicit label choice
(``"255"``, ``"1-255"``, ``"2,3,41,42"``) or, without one, by the rule that a mask holding a
single non-zero value ({0, k}) is binary. A multi-label map without a choice is refused with a
message that shows its labels and how to choose, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LABEL_TEXT = 1000
MAX_LABEL_VALUE = 2**31 - 1
_SHOWN = 12  # labels listed in an error message


class LabelError(ValueError):
    """A label choice that cannot be parsed or a mask that cannot be binarised (says why)."""


@dataclass(frozen=True)
class LabelSet:
    """Foreground values as inclusive integer ranges, e.g. ``[(1, 255)]`` or ``[(2, 3)]``."""

    ranges: tuple[tuple[int, int], ...]

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Elementwise: is each (integer) value one of the foreground labels? bool, same shape."""
        hit = np.zeros(values.shape, dtype=bool)
        for low, high in self.ranges:
            hit |= (values >= low) & (values <= high)
        return hit

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


def _int(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise LabelError(
            f"mask_labels {spec!r}: {text.strip()!r} is not an integer label; give values like "
            "255, a range like 1-255 or a list like 2,3,41,42"
        ) from None
    if not 0 <= value <= MAX_LABEL_VALUE:
        raise LabelError(f"mask_labels {spec!r}: label {value} is outside 0..{MAX_LABEL_VALUE}")
    return value


def parse_labels(spec: str | None) -> LabelSet | None:
    """``"255"``, ``"1-255"``, ``"2,3,41,42"`` or a mix (``"2,10-20"``) -> LabelSet, or None."""
    if spec is None or not spec.strip():
        return None
    if len(spec) > MAX_LABEL_TEXT:
        raise LabelError(f"mask_labels: at most {MAX_LABEL_TEXT} characters")
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        # A leading "-" would be a negative number, which no label tool writes: refuse it plainly.
        low_text, sep, high_text = part.strip().partition("-")
        low = _int(low_text, spec)
        high = _int(high_text, spec) if sep else low
        if high < low:
            raise LabelError(
                f"mask_labels {spec!r}: range {low}-{high} is empty; write {high}-{low}"
            )
        ranges.append((low, high))
    if not ranges:
        raise LabelError(f"mask_labels {spec!r} names no label; give e.g. 1 or 1-255")
    return LabelSet(tuple(sorted(set(ranges))))


def _shown(values: np.ndarray) -> str:
    listed = ", ".join(f"{v:g}" for v in values[:_SHOWN].tolist())
    return listed + (f", ... ({values.size} values)" if values.size > _SHOWN else "")


def binarize(mask: np.ndarray, labels: LabelSet | None, name: str = "mask") -> np.ndarray:
    """The foreground of ``mask`` as bool, same shape.

    Without ``labels`` the mask must hold at most one non-zero value (0/1, 0/255, ...).
    With ``labels`` the values must be integers and at least one voxel must carry a chosen label.
    Raises LabelError with a message that says how to fix the mask or the choice.
    """
    if mask.dtype == np.bool_:
        return mask if labels is None else labels.contains(mask.astype(np.uint8))
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all():
            raise LabelError(f"{name}: contains NaN or infinite values")
        if not np.array_equal(mask, np.round(mask)):
            raise LabelError(
                f"{name}: holds non-integer values; a mask must hold integer labels "
                "(save it as an integer type, e.g. uint8)"
            )
    values = np.unique(mask)
    nonzero = values[values != 0]
    if labels is None:
        if nonzero.size <= 1:
            return np.asarray(mask != 0)
        raise LabelError(
            f"{name}: is a label map with {nonzero.size} labels ({_shown(nonzero)}); say which "
            "labels are the brain with mask_labels, e.g. mask_labels="
            f"{_example(nonzero)} (a list), or a range like mask_labels="
            f"{int(nonzero.min())}-{int(nonzero.max())}"
        )
    foreground = labels.contains(mask)
    if not foreground.any():
        raise LabelError(
            f"{name}: no voxel carries a label in mask_labels={labels}; the mask holds "
            f"{_shown(values)}"
        )
    return foreground


def _example(labels: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in labels[:4].tolist())
