"""DICOM MR series -> volume (geometry, decoding, slice order) and masks <-> DICOM SEG."""

from __future__ import annotations

import gzip
import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from spottune.ml.dicom import (
    DicomError,
    headers_from_json,
    headers_to_json,
    read_series,
    volume_to_nifti_bytes,
)
from spottune.ml.dicom_seg import align_to_grid, mask_to_seg, seg_to_labelmap, seg_to_mask
from spottune.ml.volumes import Volume, mask_to_nifti_bytes, volume_from_bytes
from tests.dicom_series import GEOMETRIES, expected_volume, phantom, series_datasets, write_series


@pytest.mark.parametrize("orientation", sorted(GEOMETRIES))
def test_series_reads_as_the_volume_it_was_written_from(tmp_path: Path, orientation: str) -> None:
    image, _ = phantom(seed=4)
    geometry = GEOMETRIES[orientation]
    datasets = series_datasets(image, geometry)
    series = read_series(write_series(tmp_path, datasets))  # files shuffled on disk
    data, affine = expected_volume(image, geometry)
    assert np.allclose(series.volume.affine, affine, atol=1e-4)
    assert np.array_equal(series.volume.data, data)
    # header k is the frame of slice k: its position is the world point of voxel (0, 0, k)
    for k, header in enumerate(series.headers):
        ras = series.volume.affine @ [0, 0, k, 1]
        lps = ras[:3] * [-1, -1, 1]
        assert np.allclose(np.asarray(header.ImagePositionPatient), lps, atol=1e-4)
    assert series.series_instance_uid == datasets[0].SeriesInstanceUID
    assert all("PixelData" not in h for h in series.headers)


def test_compressed_series_decodes_to_the_same_volume(tmp_path: Path) -> None:
    image, _ = phantom(seed=5)
    datasets = series_datasets(image, GEOMETRIES["sagittal"])
    paths = write_series(tmp_path, datasets, rle=True)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID.is_compressed
    series = read_series(paths)
    assert np.array_equal(series.volume.data, expected_volume(image, GEOMETRIES["sagittal"])[0])


def _pydicom_files() -> list[str]:
    from pydicom.data import get_testdata_file

    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
             "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
             "MR_small_expb.dcm", "MR_small_padded.dcm"]
    found = [n for n in names if get_testdata_file(n, download=False)]
    if "MR_small.dcm" not in found:
        pytest.skip("the installed pydicom ships no MR test files")
    return found


def test_pydicom_test_files_decode_alike_in_every_transfer_syntax() -> None:
    from pydicom.data import get_testdata_file

    files = _pydicom_files()
    reference = read_series([Path(get_testdata_file("MR_small.dcm"))])
    assert reference.volume.shape == (64, 64, 1)
    decoded = 0
    for name in files:
        path = Path(get_testdata_file(name))
        try:
            _ = pydicom.dcmread(path).pixel_array  # can any installed decoder read it?
        except Exception:
            with pytest.raises(DicomError, match="cannot be decoded"):
                read_series([path])
            continue
        series = read_series([path])
        assert np.array_equal(series.volume.data, reference.volume.data), name
        assert np.allclose(series.volume.affine, reference.volume.affine), name
        decoded += 1
    assert decoded >= 5  # uncompressed variants, RLE and JPEG-LS at least


def test_truncated_pydicom_file_is_refused() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_truncated.dcm", download=False)
    if path is None:
        pytest.skip("the installed pydicom ships no MR_truncated.dcm")
    with pytest.raises(DicomError, match="truncated"):
        read_series([Path(path)])


@pytest.mark.parametrize("orientation", ["axial", "oblique", "coronal-flipped"])
def test_dicom_to_nifti_mask_to_seg_round_trip_loses_nothing(
    tmp_path: Path, orientation: str
) -> None:
    image, brain = phantom(seed=6)
    geometry = GEOMETRIES[orientation]
    series = read_series(write_series(tmp_path, series_datasets(image, geometry)))
    truth = expected_volume(brain, geometry)[0]
    # stored as the service stores them: volume and mask as NIfTI, headers as DICOM JSON
    volume = volume_from_bytes(volume_to_nifti_bytes(series.volume), "image.nii.gz")
    assert np.array_equal(volume.data, series.volume.data)
    assert np.allclose(volume.affine, series.volume.affine, atol=1e-5)
    mask = volume_from_bytes(mask_to_nifti_bytes(truth, volume.affine), "mask.nii.gz").data
    headers = headers_from_json(headers_to_json(series.headers))
    created = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    instance = uuid.uuid4()
    seg = mask_to_seg(mask, headers, instance_id=instance, created=created)
    assert seg == mask_to_seg(mask, headers, instance_id=instance, created=created)
    assert np.array_equal(seg_to_mask(seg, series), truth.astype(bool))
    raw = pydicom.dcmread(io.BytesIO(seg))
    assert raw.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert int(raw.NumberOfFrames) == truth.shape[2] and raw.BitsAllocated == 1
    assert raw.SeriesInstanceUID == f"2.25.{instance.int}"


def test_seg_segments_are_chosen_like_labels(tmp_path: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from spottune.ml.labels import parse_labels

    image, brain = phantom(seed=7)
    series = read_series(write_series(tmp_path, series_datasets(image, GEOMETRIES["axial"])))
    left = brain.copy()
    left[left.shape[0] // 2:] = 0
    right = brain - left
    frames = np.stack([np.transpose(m, (2, 1, 0)) for m in (left, right)], axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Brain,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, label in ((1, "left"), (2, "right"))
    ]
    seg = hd.seg.Segmentation(
        source_images=series.headers, pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="x", manufacturer_model_name="x",
        software_versions="1", device_serial_number="1")
    buffer = io.BytesIO()
    seg.save_as(buffer)
    data = buffer.getvalue()
    assert np.array_equal(seg_to_labelmap(hd.seg.segread(io.BytesIO(data)), series),
                          left + 2 * right)
    with pytest.raises(DicomError, match="mask_labels"):
        seg_to_mask(data, series)
    assert np.array_equal(seg_to_mask(data, series, parse_labels("2")), right.astype(bool))
    assert np.array_equal(seg_to_mask(data, series, parse_labels("1,2")), brain.astype(bool))


def test_nifti_mask_from_another_converter_is_put_on_the_series_grid(tmp_path: Path) -> None:
    image, brain = phantom(seed=8)
    series = read_series(write_series(tmp_path, series_datasets(image, GEOMETRIES["oblique"])))
    affine = series.volume.affine
    # dcm2niix-like: rows flipped, and for good measure the first two axes swapped
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = brain.shape[1] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    converted = nib.Nifti1Image(np.transpose(brain[:, ::-1, :], (1, 0, 2)), affine @ flip @ swap)
    assert np.array_equal(align_to_grid(converted, series.volume), brain)
    shifted = nib.Nifti1Image(brain, affine @ np.array(
        [[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(DicomError, match="not on the series' grid"):
        align_to_grid(shifted, series.volume)
    with pytest.raises(DicomError, match="not on the series' grid"):
        align_to_grid(nib.Nifti1Image(brain[:, :, :-1], affine), series.volume)


def test_stored_volume_keeps_integer_values_compactly() -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 100
    stored = volume_to_nifti_bytes(Volume(data, np.eye(4)))
    img = nib.Nifti1Image.from_bytes(gzip.decompress(stored))
    assert img.get_data_dtype() == np.int16 and np.array_equal(img.get_fdata(), data)
    fractional = Volume(data + 0.25, np.eye(4))
    img = nib.Nifti1Image.from_bytes(gzip.decompress(volume_to_nifti_bytes(fractional)))
    assert img.get_data_dtype() == np.float32 and np.allclose(img.get_fdata(), data + 0.25)
