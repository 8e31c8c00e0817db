"""DICOM through the client: a series uploaded as a zip, its mask downloaded as a DICOM SEG by
default and as NIfTI on request."""

from __future__ import annotations

from pathlib import Path

import pydicom

from spottune.client import Client
from spottune.ml.checkpoint import save_checkpoint
from spottune.ml.factory import build_model
from tests.client.conftest import Service
from tests.dicom_series import GEOMETRIES, phantom, series_datasets, series_zip
from tests.worker.helpers import tiny_config


def test_a_dicom_series_comes_back_as_seg_or_nifti(service: Service, tmp_path: Path) -> None:
    client = Client(service.url, service.new_clinic("dicom-client-clinic"))
    config = tiny_config()
    save_checkpoint(build_model(config), config, tmp_path / "tiny.safetensors")
    model = client.upload_model(tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    datasets = series_datasets(phantom(seed=5)[0], GEOMETRIES["axial"])
    (tmp_path / "series.zip").write_bytes(series_zip(datasets, tmp_path / "files"))
    scan = client.upload_scan(tmp_path / "series.zip", site="pacs")
    job = client.segment(model, [scan]).wait(timeout=120, progress=False)
    [seg] = client.download_masks(job, tmp_path / "seg")
    assert seg.name == f"{scan.id}_mask.dcm"
    assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == (
        datasets[0].SeriesInstanceUID)
    [nifti] = client.download_masks(job, tmp_path / "nifti", format="nifti")
    assert nifti.name == f"{scan.id}_mask.nii.gz" and nifti.read_bytes()[:2] == b"\x1f\x8b"
