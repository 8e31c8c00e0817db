"""Scans uploaded as a DICOM series: validation, storage of their DICOM identity, SEG export.

A series is stored as its volume (NIfTI, so workers read it like any upload) plus its headers
without pixel data (DICOM JSON) in a ``scan_dicom`` row: enough to send any mask on the scan
back as a DICOM SEG that references the series' own frames. Nothing is stored until the
series, the mask and the labels have all been validated.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import nibabel as nib
import numpy as np
from sqlalchemy.orm import Session

from spottune.app.dicom_zip import unpack_series_zip
from spottune.app.errors import Invalid
from spottune.app.services.quota import check_storage
from spottune.app.uploads import check_annotated_slices, pick_suffix, spool
from spottune.app.volume_guard import check_volume_file
from spottune.core import blobs
from spottune.core.models import Mask, Scan, ScanDicom
from spottune.core.settings import Settings
from spottune.ml.labels import LabelError, LabelSet, binarize

if TYPE_CHECKING:  # the ml modules import torch; the API loads them only when it needs them
    from spottune.ml.dicom import DicomSeries

DICOM_ZIP = ".zip"
MASK_SUFFIXES = (".nii", ".nii.gz", ".dcm")
DICOM_JSON = "application/dicom+json"
NIFTI_GZ = "application/gzip"


def max_unpacked_bytes(settings: Settings) -> int:
    """Bound on a series zip's uncompressed size: 8 bytes per allowed voxel + headers' share."""
    return 8 * settings.max_voxels + 8 * settings.max_upload_bytes


def _series(zip_path: Path, settings: Settings) -> DicomSeries:
    from spottune.ml.dicom import DicomError, read_series

    with tempfile.TemporaryDirectory(prefix="spottune-dicom-") as tmp:
        unpacked = unpack_series_zip(zip_path, Path(tmp), max_unpacked_bytes(settings))
        try:
            return read_series(unpacked.paths, unpacked.names, max_voxels=settings.max_voxels)
        except DicomError as exc:
            raise Invalid(f"image: {exc}", code="invalid_dicom") from None


def _mask(path: Path, suffix: str, series: DicomSeries, labels: LabelSet | None,
          settings: Settings) -> np.ndarray:
    """The uploaded mask (SEG or NIfTI on the series' grid) as bool [columns, rows, slices]."""
    from spottune.ml.dicom import DicomError
    from spottune.ml.dicom_seg import align_to_grid, seg_to_mask

    try:
        if suffix == ".dcm":
            return seg_to_mask(path.read_bytes(), series, labels)
        check_volume_file(path, suffix, settings.max_voxels, "mask")
        try:
            image: Any = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for damaged files
            raise DicomError(f"cannot be read as NIfTI ({type(exc).__name__})") from None
        return binarize(align_to_grid(image, series.volume), labels, "the mask")
    except (DicomError, LabelError) as exc:
        raise Invalid(f"mask: {exc}", code="invalid_mask") from None


def create_dicom_scan(
    session: Session,
    settings: Settings,
    clinic_id: uuid.UUID,
    *,
    image: BinaryIO,
    mask: BinaryIO | None,
    mask_name: str | None,
    labels: LabelSet | None,
    site: str | None,
    subject: str | None,
    slices: list[int] | None,
) -> Scan:
    """Validate a zipped series (and its mask) completely, then store the scan and its identity."""
    from spottune.ml.dicom import headers_to_json, volume_to_nifti_bytes
    from spottune.ml.volumes import mask_to_nifti_bytes

    mask_suffix = pick_suffix(mask_name, MASK_SUFFIXES, "mask") if mask is not None else None
    with tempfile.TemporaryDirectory(prefix="spottune-upload-") as tmp:
        zip_path = Path(tmp) / "series.zip"
        spool(image, zip_path, settings.max_upload_bytes, "image")
        series = _series(zip_path, settings)
        binary = None
        if mask is not None and mask_suffix is not None:
            mask_path = Path(tmp) / f"mask{mask_suffix}"
            spool(mask, mask_path, settings.max_upload_bytes, "mask")
            binary = _mask(mask_path, mask_suffix, series, labels, settings)
    volume = series.volume
    check_annotated_slices(slices, volume.shape)
    image_bytes = volume_to_nifti_bytes(volume)
    headers = headers_to_json(series.headers)
    mask_bytes = None if binary is None else mask_to_nifti_bytes(binary, volume.affine)
    check_storage(
        session, settings, clinic_id, len(image_bytes) + len(headers) + len(mask_bytes or b"")
    )
    image_blob = blobs.write_blob(session, clinic_id, image_bytes, NIFTI_GZ)
    mask_blob = None if mask_bytes is None else blobs.write_blob(
        session, clinic_id, mask_bytes, NIFTI_GZ
    )
    headers_blob = blobs.write_blob(session, clinic_id, headers, DICOM_JSON)
    scan = Scan(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        site=site,
        subject=subject,
        image_blob_id=image_blob.id,
        mask_blob_id=None if mask_blob is None else mask_blob.id,
        annotated_slices=slices,
        shape=list(volume.shape),
        spacing=[round(s, 6) for s in volume.spacing],
        orientation="".join(nib.aff2axcodes(volume.affine)),
        sha256=image_blob.sha256,
    )
    session.add(scan)
    session.flush()
    session.add(
        ScanDicom(
            scan_id=scan.id,
            study_instance_uid=series.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            frame_of_reference_uid=series.frame_of_reference_uid,
            n_frames=len(series.headers),
            headers_blob_id=headers_blob.id,
        )
    )
    session.flush()
    return scan


def dicom_identity(session: Session, scan_id: uuid.UUID) -> ScanDicom | None:
    return session.get(ScanDicom, scan_id)


def delete_dicom_identity(session: Session, scan_id: uuid.UUID) -> None:
    """Remove the scan's DICOM row and headers blob (before the scan row itself)."""
    row = session.get(ScanDicom, scan_id)
    if row is None:
        return
    blob_id = row.headers_blob_id
    session.delete(row)
    session.flush()
    blobs.delete_blob(session, blob_id)


def mask_as_dicom_seg(session: Session, mask: Mask) -> bytes:
    """The stored mask as a DICOM SEG on its scan's source series (422 for a NIfTI upload)."""
    from spottune.ml.dicom import headers_from_json
    from spottune.ml.dicom_seg import mask_to_seg
    from spottune.ml.volumes import volume_from_bytes

    identity = session.get(ScanDicom, mask.scan_id)
    if identity is None:
        raise Invalid(
            f"mask {mask.id} is on a scan uploaded as NIfTI, which has no DICOM series to "
            "reference; download it with format=nifti (DICOM SEG needs a scan uploaded as a "
            "DICOM series)",
            code="not_dicom",
        )
    headers = headers_from_json(blobs.read_blob(session, identity.headers_blob_id))
    data = volume_from_bytes(blobs.read_blob(session, mask.blob_id), "mask.nii.gz").data
    return mask_to_seg(data != 0, headers, instance_id=mask.id, created=mask.created_at)
