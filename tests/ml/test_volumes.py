"""Loading, checking, preparing and restoring volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from spottune.ml.config import Preprocessing
from spottune.ml.labels import parse_labels
from spottune.ml.metrics import dice
from spottune.ml.preparation import prepare_volume, restore_to_grid
from spottune.ml.synthetic import make_phantom, write_phantom
from spottune.ml.volumes import (
    Volume,
    VolumeError,
    load_mask,
    load_volume,
    mask_to_nifti_bytes,
    save_mask,
    volume_from_bytes,
)

SHAPE = (20, 24, 16)


def _affine(codes: str, spacing: tuple[float, float, float]) -> np.ndarray:
    """An affine whose voxel axes point along `codes` (e.g. "LIA") with the given voxel sizes."""
    affine = np.eye(4)
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    for axis, (ras_axis, flip) in enumerate(orientations.axcodes2ornt(codes)):
        affine[:3, axis] = 0.0
        affine[int(ras_axis), axis] = flip * spacing[axis]
    return affine


def _volume_and_mask(codes: str, spacing: tuple[float, float, float]) -> tuple[Volume, np.ndarray]:
    image, mask = make_phantom(SHAPE, seed=1)
    return Volume(image, _affine(codes, spacing)), mask.astype(bool)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LIA", "PSR"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.2, 3.0)])
def test_mask_round_trip_is_exact_without_resampling(codes: str, spacing: tuple) -> None:
    volume, mask = _volume_and_mask(codes, spacing)
    ras_spacing = np.empty(3)
    ras_spacing[orientations.axcodes2ornt(codes)[:, 0].astype(int)] = spacing
    prep = Preprocessing(spacing_mm=(float(ras_spacing[0]), float(ras_spacing[1])), slice_axis=2)
    prepared = prepare_volume(volume, prep, mask)
    assert prepared.mask is not None
    assert (
        prepared.image.shape[0]
        == SHAPE[int(np.flatnonzero(orientations.axcodes2ornt(codes)[:, 0] == 2)[0])]
    )
    restored = restore_to_grid(prepared, prepared.mask)
    assert restored.dtype == np.uint8 and restored.shape == SHAPE
    assert np.array_equal(restored.astype(bool), mask)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LIA"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.2, 3.0)])
@pytest.mark.parametrize("slice_axis", [0, 2])
def test_mask_round_trip_with_resampling(codes: str, spacing: tuple, slice_axis: Any) -> None:
    volume, mask = _volume_and_mask(codes, spacing)
    prepared = prepare_volume(
        volume, Preprocessing(spacing_mm=(0.95, 0.8), slice_axis=slice_axis), mask
    )
    assert prepared.image.dtype == np.float32 and prepared.image.ndim == 3
    assert prepared.image.min() >= 0.0 and prepared.image.max() <= 1.0
    assert prepared.mask is not None
    restored = restore_to_grid(prepared, prepared.mask)
    assert restored.shape == SHAPE
    assert dice(restored, mask) > 0.95
    probs = restore_to_grid(prepared, prepared.mask.astype(np.float32))
    assert probs.dtype == np.float32 and probs.shape == SHAPE


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LIA", "RPI"])
def test_annotated_slices_follow_flips(codes: str) -> None:
    volume, mask = _volume_and_mask(codes, (1.0, 1.0, 1.0))
    axis = int(np.flatnonzero(orientations.axcodes2ornt(codes)[:, 0] == 2)[0])
    chosen = [1, 4]
    # Give the chosen uploaded slices a distinctive mask so we can find them after preparation.
    marked = np.zeros_like(mask)
    index: list = [slice(None)] * 3
    index[axis] = chosen
    marked[tuple(index)] = True
    prepared = prepare_volume(volume, Preprocessing(spacing_mm=(1.0, 1.0)), marked, chosen)
    assert prepared.annotated.sum() == 2
    assert prepared.mask is not None
    full = prepared.mask.reshape(prepared.mask.shape[0], -1).all(axis=1)
    assert np.array_equal(full, prepared.annotated)


def test_annotation_defaults() -> None:
    volume, mask = _volume_and_mask("RAS", (1.0, 1.0, 1.0))
    assert prepare_volume(volume, Preprocessing(), mask).annotated.all()
    unlabelled = prepare_volume(volume, Preprocessing())
    assert unlabelled.mask is None and not unlabelled.annotated.any()
    with pytest.raises(VolumeError, match="outside"):
        prepare_volume(volume, Preprocessing(), mask, [SHAPE[2]])


def test_file_round_trip(tmp_path: Path) -> None:
    affine = _affine("LIA", (1.0, 1.2, 3.0))
    for suffix in (".nii", ".nii.gz", ".mgz"):
        image_path, mask_path = tmp_path / f"img{suffix}", tmp_path / f"mask{suffix}.nii.gz"
        write_phantom(image_path, mask_path, shape=SHAPE, affine=affine)
        volume = load_volume(image_path)
        assert volume.shape == SHAPE and volume.data.dtype == np.float32
        assert np.allclose(volume.spacing, (1.0, 1.2, 3.0), atol=1e-5)
        mask = load_mask(mask_path, volume)
        assert mask.dtype == bool and mask.any()
    data = mask_to_nifti_bytes(mask, affine)
    again = volume_from_bytes(data, "upload.nii.gz")
    assert np.array_equal(again.data.astype(bool), mask)
    assert np.allclose(again.affine, affine)


def test_4d_single_volume_is_squeezed(tmp_path: Path) -> None:
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 1), np.float32), np.eye(4)), str(path))
    assert load_volume(path).shape == SHAPE


@pytest.mark.parametrize(
    ("shape", "message"), [((20, 24), "3D"), ((4, 4, 4, 2), "3D"), ((2, 2, 2, 1, 1), "3D")]
)
def test_refuses_wrong_dimensions(tmp_path: Path, shape: tuple, message: str) -> None:
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    with pytest.raises(VolumeError, match=message):
        load_volume(path)


def test_refuses_bad_values_and_sizes(tmp_path: Path) -> None:
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="NaN"):
        load_volume(path)
    with pytest.raises(VolumeError, match="exceeds"):
        load_volume(path, max_voxels=100)
    with pytest.raises(VolumeError, match="unsupported"):
        volume_from_bytes(b"whatever", "scan.png")
    with pytest.raises(VolumeError, match="cannot be read"):
        volume_from_bytes(b"not a nifti file at all", "scan.nii.gz")


def test_refuses_bad_masks(tmp_path: Path) -> None:
    volume = Volume(np.ones(SHAPE, np.float32), np.eye(4))
    good = np.zeros(SHAPE, np.uint8)
    other_grid = tmp_path / "shifted.nii.gz"
    save_mask(good, _affine("RAS", (1.0, 1.0, 2.0)), other_grid)
    with pytest.raises(VolumeError, match="affine"):
        load_mask(other_grid, volume)
    wrong_shape = tmp_path / "shape.nii.gz"
    save_mask(np.zeros((4, 4, 4)), np.eye(4), wrong_shape)
    with pytest.raises(VolumeError, match="shape"):
        load_mask(wrong_shape, volume)
    labels = tmp_path / "labels.nii.gz"
    label_map = np.full(SHAPE, 2, np.uint8)
    label_map.flat[::3] = 41
    nib.save(nib.Nifti1Image(label_map, np.eye(4)), str(labels))
    with pytest.raises(VolumeError, match="label map with 2 labels .* mask_labels"):
        load_mask(labels, volume)
    assert np.array_equal(load_mask(labels, volume, parse_labels("41")), label_map == 41)
    boolean = tmp_path / "ok.nii.gz"
    save_mask(good, np.eye(4), boolean)
    assert not load_mask(boolean, volume).any()
