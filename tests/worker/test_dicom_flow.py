"""DICOM end to end with a real worker: annotated series (SEG masks) pretrain a model, series of
three orientations are segmented, and each mask comes back as a DICOM SEG on its series' frames."""

from __future__ import annotations

import gzip
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from spottune.ml.dicom import read_series
from spottune.ml.dicom_seg import mask_to_seg
from spottune.ml.metrics import dice
from tests.dicom_series import (
    GEOMETRIES,
    expected_volume,
    phantom,
    series_datasets,
    series_zip,
    write_series,
)
from tests.worker.helpers import submit_job, wait_succeeded

SOURCE_OPTIONS = {"width": 4, "depth": 2, "blocks_per_stage": 1, "spacing_mm": [1.5, 1.5],
                  "patch_size": 32, "iterations": 40, "batch_size": 4, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def client(worker) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from spottune.app.admin import create_clinic
    from spottune.app.main import create_app

    key = create_clinic(f"dicom-{time.monotonic_ns()}").key
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client


def _upload(client: TestClient, datasets: list[Any], tmp: Path,
            mask: tuple[str, bytes] | None = None) -> str:
    files: dict[str, Any] = {"image": ("series.zip", series_zip(datasets, tmp))}
    if mask is not None:
        files["mask"] = mask
    response = client.post("/v1/scans", files=files)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_dicom_series_segmented_come_back_as_seg_on_their_frames(
    client: TestClient, tmp_path: Path
) -> None:
    train = []
    for seed in (10, 11):  # annotated series: the brain mask sent as a DICOM SEG
        image, brain = phantom(seed=seed)
        datasets = series_datasets(image, GEOMETRIES["axial"])
        series = read_series(write_series(tmp_path / f"read{seed}", datasets))
        seg = mask_to_seg(brain, series.headers, instance_id=uuid.uuid4())
        train.append(_upload(client, datasets, tmp_path / f"t{seed}", ("brain.dcm", seg)))
    pretrain = submit_job(client, "/v1/pretrainings",
                          {"train_scan_ids": train, "options": SOURCE_OPTIONS})
    model_id = wait_succeeded(client, pretrain, 120)["result"]["model_id"]

    targets = {}
    for seed, orientation in ((20, "axial"), (21, "sagittal"), (22, "oblique")):
        image, brain = phantom(seed=seed)
        datasets = series_datasets(image, GEOMETRIES[orientation])
        scan_id = _upload(client, datasets, tmp_path / orientation)
        targets[scan_id] = (orientation, datasets, brain)
    job = wait_succeeded(client, submit_job(client, "/v1/segmentations",
                                            {"model_id": model_id, "scan_ids": list(targets)}),
                         120)
    masks = client.get(f"/v1/jobs/{job['id']}/masks").json()["items"]
    assert sorted(m["scan_id"] for m in masks) == sorted(targets)

    for item in masks:
        orientation, datasets, brain = targets[item["scan_id"]]
        response = client.get(f"/v1/masks/{item['id']}")  # DICOM scans default to DICOM SEG
        assert response.headers["content-type"] == "application/dicom"
        raw = pydicom.dcmread(io.BytesIO(response.content))
        assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        for frame in raw.PerFrameFunctionalGroupsSequence:
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            position = frame.PlanePositionSequence[0].ImagePositionPatient
            assert np.allclose(position, by_uid[source.ReferencedSOPInstanceUID]
                               .ImagePositionPatient, atol=1e-4)
        seg = hd.seg.segread(io.BytesIO(response.content))
        on_frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets],
            segment_numbers=[1])[..., 0]
        # the same mask as NIfTI, on the series' volume with the series' RAS geometry
        nifti = nib.Nifti1Image.from_bytes(gzip.decompress(
            client.get(f"/v1/masks/{item['id']}?format=nifti").content))
        data, affine = expected_volume(np.transpose(on_frames, (2, 1, 0)), GEOMETRIES[orientation])
        assert np.allclose(nifti.affine, affine, atol=1e-4), orientation
        assert np.array_equal(np.asarray(nifti.dataobj), data), orientation
        # and it lies on the brain of its source frames: the same mask three frames off does not
        truth = np.transpose(brain, (2, 1, 0)).astype(bool)  # frame k = slice k, rows x columns
        found = on_frames.astype(bool)
        assert dice(found, truth) > 0.65, orientation
        assert dice(found, truth) > dice(found, np.roll(truth, 3, axis=0)) + 0.1, orientation
