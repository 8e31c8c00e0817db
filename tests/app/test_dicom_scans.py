"""DICOM series uploads: geometry kept, masks as SEG or NIfTI, hostile series refused cleanly."""

from __future__ import annotations

import gzip
import io
import uuid
import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spottune.core.blobs import write_blob
from spottune.core.models import Blob, BlobChunk, Job, JobKind, JobStatus, Mask, Scan, ScanDicom
from spottune.ml.dicom import read_series
from spottune.ml.dicom_seg import mask_to_seg
from tests.app.helpers import ClinicCtx, nifti_bytes
from tests.dicom_series import (
    GEOMETRIES,
    SeriesIds,
    expected_volume,
    phantom,
    series_datasets,
    series_zip,
    write_series,
    zip_bytes,
)


def _counts(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (Scan, ScanDicom, Blob, BlobChunk)
        }


def _post(client: TestClient, clinic: ClinicCtx, image: bytes,  # type: ignore[no-untyped-def]
          mask: tuple[str, bytes] | None = None, name: str = "series.zip", **form: str):
    files = {"image": (name, image)}
    if mask is not None:
        files["mask"] = mask
    return client.post("/v1/scans", headers=clinic.headers, files=files, data=form)


def _nifti(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique"])
def test_series_becomes_the_volume_with_its_geometry(
    client: TestClient, clinic_a: ClinicCtx, tmp_path: Path, orientation: str
) -> None:
    image, _ = phantom(seed=1)
    geometry = GEOMETRIES[orientation]
    datasets = series_datasets(image, geometry)
    r = _post(client, clinic_a, series_zip(datasets, tmp_path))
    assert r.status_code == 201, r.text
    scan = r.json()
    assert scan["dicom"]["series_instance_uid"] == datasets[0].SeriesInstanceUID
    assert scan["dicom"]["frame_of_reference_uid"] == datasets[0].FrameOfReferenceUID
    assert scan["dicom"]["n_frames"] == image.shape[2]
    data, affine = expected_volume(image, geometry)
    assert scan["shape"] == list(data.shape)
    assert np.allclose(scan["spacing"], np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)
    assert scan["orientation"] == "".join(nib.aff2axcodes(affine))
    stored = _nifti(client.get(f"/v1/scans/{scan['id']}/image", headers=clinic_a.headers).content)
    assert np.allclose(stored.affine, affine, atol=1e-4)
    assert np.array_equal(np.asarray(stored.dataobj), data)


def test_annotated_series_with_seg_or_nifti_mask(
    client: TestClient, clinic_a: ClinicCtx, tmp_path: Path
) -> None:
    image, brain = phantom(seed=2)
    datasets = series_datasets(image, GEOMETRIES["coronal-flipped"])
    archive = series_zip(datasets, tmp_path / "zip")
    series = read_series(write_series(tmp_path / "files", datasets))
    truth = expected_volume(brain, GEOMETRIES["coronal-flipped"])[0]
    seg = mask_to_seg(truth, series.headers, instance_id=uuid.uuid4())
    r = _post(client, clinic_a, archive, ("brain.dcm", seg), annotated_slices="3,5")
    assert r.status_code == 201, r.text
    assert r.json()["has_mask"] and r.json()["annotated_slices"] == [3, 5]
    got = _nifti(client.get(f"/v1/scans/{r.json()['id']}/mask", headers=clinic_a.headers).content)
    assert np.array_equal(np.asarray(got.dataobj), truth)

    # NIfTI on the series' grid as another converter writes it: rows flipped, 0/255 values.
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = truth.shape[1] - 1
    converted = nifti_bytes((truth[:, ::-1, :] * 255).astype(np.uint8), series.volume.affine @ flip)
    r = _post(client, clinic_a, archive, ("brain.nii.gz", converted))
    assert r.status_code == 201, r.text
    got = _nifti(client.get(f"/v1/scans/{r.json()['id']}/mask", headers=clinic_a.headers).content)
    assert np.array_equal(np.asarray(got.dataobj), truth)


def _store_job_mask(factory: sessionmaker[Session], clinic: ClinicCtx, scan_id: str,
                    mask: np.ndarray, affine: np.ndarray) -> str:
    """A finished segmentation's mask row, as a worker stores it (NIfTI on the scan's grid)."""
    with factory() as session, session.begin():
        job = Job(clinic_id=clinic.id, kind=JobKind.SEGMENTATION, status=JobStatus.SUCCEEDED,
                  params={"scan_ids": [scan_id]})
        session.add(job)
        session.flush()
        blob = write_blob(session, clinic.id, nifti_bytes(mask.astype(np.uint8), affine),  # type: ignore[arg-type]
                          "application/gzip")
        row = Mask(clinic_id=clinic.id, job_id=job.id, scan_id=uuid.UUID(scan_id), blob_id=blob.id)
        session.add(row)
        session.flush()
        return str(row.id)


def test_mask_downloads_as_dicom_seg_on_the_series_frames(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    image, brain = phantom(seed=3)
    geometry = GEOMETRIES["oblique"]
    datasets = series_datasets(image, geometry, ids=SeriesIds())
    scan = _post(client, clinic_a, series_zip(datasets, tmp_path)).json()
    truth, affine = expected_volume(brain, geometry)
    mask_id = _store_job_mask(session_factory, clinic_a, scan["id"], truth, affine)

    r = client.get(f"/v1/masks/{mask_id}", headers=clinic_a.headers)  # default: as uploaded
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    again = client.get(f"/v1/masks/{mask_id}?format=dicom-seg", headers=clinic_a.headers)
    assert again.content == r.content and again.headers["etag"] == r.headers["etag"]
    raw = pydicom.dcmread(io.BytesIO(r.content))
    assert raw.SOPClassUID == pydicom.uid.SegmentationStorage
    assert raw.SegmentSequence[0].SegmentLabel == "Brain" and raw.SegmentationType == "BINARY"
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert raw.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert raw.StudyInstanceUID == datasets[0].StudyInstanceUID
    seg = hd.seg.segread(io.BytesIO(r.content))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets], segment_numbers=[1])
    for k in range(len(datasets)):  # the frame on source image k holds the mask's slice k
        assert np.array_equal(pixels[k, :, :, 0], brain[:, :, k].T)
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    assert len(raw.PerFrameFunctionalGroupsSequence) == len(datasets)
    for frame in raw.PerFrameFunctionalGroupsSequence:  # each frame sits where its source does
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(position, by_uid[source].ImagePositionPatient, atol=1e-4)
    nifti = client.get(f"/v1/masks/{mask_id}?format=nifti", headers=clinic_a.headers)
    assert np.array_equal(np.asarray(_nifti(nifti.content).dataobj), truth)


def test_dicom_seg_of_a_nifti_scan_is_a_clear_422(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session],
    phantom: tuple[bytes, bytes],
) -> None:
    scan = client.post("/v1/scans", headers=clinic_a.headers,
                       files={"image": ("x.nii.gz", phantom[0])}).json()
    mask_id = _store_job_mask(session_factory, clinic_a, scan["id"],
                              np.ones((32, 32, 24), np.uint8), np.eye(4))
    r = client.get(f"/v1/masks/{mask_id}?format=dicom-seg", headers=clinic_a.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_dicom"
    assert "format=nifti" in r.json()["error"]["message"]
    assert client.get(f"/v1/masks/{mask_id}", headers=clinic_a.headers).headers[
        "content-type"] == "application/gzip"


def test_deleting_a_dicom_scan_leaves_nothing(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    before = _counts(session_factory)
    image, _ = phantom()
    files = write_series(tmp_path, series_datasets(image, GEOMETRIES["axial"]))
    litter = {"DICOMDIR": b"DICM", "README.txt": b"exported", "__MACOSX/._IM00000": b"\0"}
    archive = zip_bytes({**{f"a/b/{p.name}": p.read_bytes() for p in files}, **litter})
    scan = _post(client, clinic_a, archive).json()
    assert scan["shape"] == list(image.shape) and client.get(
        "/v1/scans", headers=clinic_a.headers).json()["items"][0]["dicom"]["n_frames"] == 20
    assert _counts(session_factory)["scan_dicom"] == before["scan_dicom"] + 1
    assert client.delete(f"/v1/scans/{scan['id']}", headers=clinic_a.headers).status_code == 204
    assert _counts(session_factory) == before


def _hostile(tmp: Path) -> list[tuple[str, bytes, int, str, str]]:
    """(case, zip bytes, status, error code, words the message must hold)."""
    image, _ = phantom()
    axial = GEOMETRIES["axial"]

    def zipped(datasets: list, name: str) -> bytes:  # type: ignore[type-arg]
        return series_zip(datasets, tmp / name)

    two = series_datasets(image[:, :, :10], axial) + series_datasets(image[:, :, 10:], axial)
    missing = series_datasets(image, axial)
    del missing[7]
    spacing = series_datasets(image, axial)
    spacing[4].PixelSpacing = [0.5, 0.5]
    uneven = series_datasets(image, axial)
    for k, ds in enumerate(uneven):
        ds.ImagePositionPatient = [-12.0, -20.0, 7.5 + 1.5 * k + 0.2 * k * k]
    tilted = series_datasets(image, axial)
    for k, ds in enumerate(tilted):
        ds.ImagePositionPatient = [-12.0, -20.0 + 0.5 * k, 7.5 + 1.5 * k]
    huge = series_datasets(image[:, :, :2], axial)
    for ds in huge:
        ds.Rows = ds.Columns = 4000
    ct = series_datasets(image, axial, modality="CT")
    enhanced = series_datasets(image, axial)
    for ds in enhanced:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    good_files = {p.name: p.read_bytes() for p in write_series(tmp / "good", series_datasets(
        image, axial))}
    first = next(iter(good_files))
    truncated = dict(good_files, **{first: good_files[first][: len(good_files[first]) // 2]})
    traversal = dict(good_files, **{"../../etc/evil": b"x"})
    absolute = dict(good_files, **{"/etc/evil": b"x"})
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM00000", b"\0" * (48 * 1024 * 1024))
    return [
        ("two-series", zipped(two, "two"), 422, "invalid_dicom", "2 series"),
        ("missing-slice", zipped(missing, "missing"), 422, "invalid_dicom", "missing"),
        ("inconsistent-pixel-spacing", zipped(spacing, "sp"), 422, "invalid_dicom", "PixelSpacing"),
        ("uneven-slice-spacing", zipped(uneven, "un"), 422, "invalid_dicom", "not uniform"),
        ("gantry-tilt", zipped(tilted, "tilt"), 422, "invalid_dicom", "tilt"),
        ("huge-dimensions", zipped(huge, "huge"), 422, "invalid_dicom", "voxels exceeds"),
        ("ct-modality", zipped(ct, "ct"), 422, "invalid_dicom", "not MR"),
        ("enhanced-mr", zipped(enhanced, "en"), 422, "invalid_dicom", "classic MR Image Storage"),
        ("truncated-file", zip_bytes(truncated), 422, "invalid_dicom", "truncated"),
        ("path-traversal", zip_bytes(traversal), 422, "invalid_dicom", "'..'"),
        ("absolute-path", zip_bytes(absolute), 422, "invalid_dicom", "absolute"),
        ("not-dicom", zip_bytes({"a.dcm": b"hello" * 50}), 422, "invalid_dicom", "not a DICOM"),
        ("not-a-zip", b"PK\x03\x04 broken", 422, "invalid_dicom", "not a readable .zip"),
        ("zip-bomb", bomb.getvalue(), 413, "too_large", "unpacks to"),
    ]


def test_hostile_series_are_refused_and_store_nothing(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    cases = _hostile(tmp_path)
    before = _counts(session_factory)
    for case, archive, status, code, words in cases:
        r = _post(client, clinic_a, archive)
        assert r.status_code == status, (case, r.text)
        error = r.json()["error"]
        assert error["code"] == code and words in error["message"], (case, error)
        assert "/tmp" not in r.text and "spottune-" not in r.text, case
    assert _counts(session_factory) == before


def test_hostile_masks_of_a_series_are_refused(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    image, brain = phantom()
    datasets = series_datasets(image, GEOMETRIES["axial"])
    archive = series_zip(datasets, tmp_path / "a")
    other = read_series(write_series(tmp_path / "b", series_datasets(image, GEOMETRIES["axial"])))
    foreign_seg = mask_to_seg(brain, other.headers, instance_id=uuid.uuid4())
    same_space = SeriesIds(frame_of_reference=datasets[0].FrameOfReferenceUID)
    sibling = read_series(write_series(tmp_path / "c", series_datasets(
        image, GEOMETRIES["axial"], ids=same_space)))
    sibling_seg = mask_to_seg(brain, sibling.headers, instance_id=uuid.uuid4())
    narrow = read_series(write_series(tmp_path / "d", series_datasets(
        image[:20], GEOMETRIES["axial"], ids=same_space)))
    narrow_seg = mask_to_seg(brain[:20], narrow.headers, instance_id=uuid.uuid4())
    labels = brain.astype(np.uint8) * 2 + (image > np.percentile(image, 70))  # 0..3: a label map
    before = _counts(session_factory)
    for mask, form, words in [
        (("m.dcm", foreign_seg), {}, "Frame of Reference differs"),
        (("m.dcm", sibling_seg), {}, "does not reference the uploaded series"),
        (("m.dcm", sibling_seg), {"mask_labels": "1-x"}, "not an integer label"),
        (("m.dcm", narrow_seg), {}, "frames are 28x20 pixels"),
        (("m.dcm", b"not dicom at all"), {}, "not a readable DICOM Segmentation"),
        (("m.nii.gz", nifti_bytes(brain.astype(np.uint8))), {}, "not on the series' grid"),
        (("m.nii.gz", nifti_bytes(labels, other.volume.affine)), {}, "mask_labels"),
        (("m.png", b"\x89PNG"), {}, "unsupported file type"),
    ]:
        r = _post(client, clinic_a, archive, mask, **form)
        assert r.status_code == 422, r.text
        assert words in r.json()["error"]["message"], r.text
    assert _counts(session_factory) == before


def test_label_maps_become_the_masks_they_name(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session],
    phantom: tuple[bytes, bytes],
) -> None:
    image = phantom[0]
    brain = np.asarray(_nifti(phantom[1]).dataobj).astype(np.uint8)
    aseg = brain * np.where(np.arange(32)[:, None, None] < 16, 2, 41).astype(np.uint8)
    aseg[0, 0, :3] = 7  # a structure outside the brain

    def upload(mask: np.ndarray, **form: str):  # type: ignore[no-untyped-def]
        return client.post("/v1/scans", headers=clinic_a.headers, data=form, files={
            "image": ("x.nii.gz", image), "mask": ("m.nii.gz", nifti_bytes(mask))})

    def stored(response) -> np.ndarray:  # type: ignore[no-untyped-def]
        assert response.status_code == 201, response.text
        got = client.get(f"/v1/scans/{response.json()['id']}/mask", headers=clinic_a.headers)
        return np.asarray(_nifti(got.content).dataobj)

    assert np.array_equal(stored(upload(brain * 255)), brain)  # {0, 255} is binary
    assert np.array_equal(stored(upload(aseg, mask_labels="2,41")), brain)
    assert np.array_equal(stored(upload(aseg, mask_labels="1-50")), aseg > 0)
    before = _counts(session_factory)
    refused = upload(aseg)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_mask"
    assert "3 labels (2, 7, 41)" in refused.json()["error"]["message"]
    assert "mask_labels=" in refused.json()["error"]["message"]
    for form, code in [({"mask_labels": "99"}, "invalid_mask"),
                       ({"mask_labels": "2;41"}, "invalid_mask_labels")]:
        r = upload(aseg, **form)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    r = client.post("/v1/scans", headers=clinic_a.headers, data={"mask_labels": "1"},
                    files={"image": ("x.nii.gz", image)})
    assert r.status_code == 422 and "needs a mask" in r.json()["error"]["message"]
    assert _counts(session_factory) == before
