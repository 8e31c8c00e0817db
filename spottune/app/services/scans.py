"""Scan uploads: validate the image (and mask) completely, then store; and deletion."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
from sqlalchemy.orm import Session

from spottune.app.errors import Conflict, Invalid, NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.repositories import scans as scan_repo
from spottune.app.services import dicom_scans, erase
from spottune.app.services.quota import check_storage
from spottune.app.uploads import check_annotated_slices, pick_suffix, spool
from spottune.app.volume_guard import check_volume_file
from spottune.core import blobs
from spottune.core.formats import CONTENT_TYPES, VOLUME_SUFFIXES
from spottune.core.models import Scan
from spottune.core.settings import Settings
from spottune.ml.labels import LabelError, LabelSet, parse_labels

IMAGE_SUFFIXES = (*VOLUME_SUFFIXES, dicom_scans.DICOM_ZIP)
MAX_LABEL = 200


def parse_slices(text: str | None) -> list[int] | None:
    """``"[3, 7]"`` or ``"3,7"`` -> sorted unique ints; None when not given."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    try:
        values = (
            json.loads(raw) if raw.startswith("[") else [p for p in raw.split(",") if p.strip()]
        )
        if not isinstance(values, list):
            raise ValueError
        parsed = [int(v) for v in values if not isinstance(v, bool | float)]
        if len(parsed) != len(values):
            raise ValueError
    except ValueError:
        raise Invalid(
            "annotated_slices: give a JSON list of slice indices like [3, 7] "
            "or a comma list like 3,7",
            code="invalid_annotated_slices",
        ) from None
    return sorted(set(parsed))


def _check_label(value: str | None, field: str) -> str | None:
    if value is not None and len(value) > MAX_LABEL:
        raise Invalid(f"{field}: at most {MAX_LABEL} characters")
    return value or None


def create_scan(
    session: Session,
    settings: Settings,
    clinic_id: uuid.UUID,
    *,
    image: BinaryIO,
    image_name: str | None,
    mask: BinaryIO | None,
    mask_name: str | None,
    site: str | None,
    subject: str | None,
    annotated_slices: str | None,
    mask_labels: str | None = None,
) -> Scan:
    """Validate image and mask fully (nothing stored on failure), then store blobs and the row.

    The image is a NIfTI/MGH volume or a .zip of one DICOM series (see services.dicom_scans);
    ``mask_labels`` names the mask's foreground values (e.g. ``255``, ``1-255``, ``2,3,41``).
    """
    from spottune.ml.volumes import VolumeError, load_mask, load_volume, mask_to_nifti_bytes

    site, subject = _check_label(site, "site"), _check_label(subject, "subject")
    slices = parse_slices(annotated_slices)
    if slices is not None and mask is None:
        raise Invalid(
            "annotated_slices needs a mask: upload the mask of the annotated slices",
            code="invalid_annotated_slices",
        )
    labels = parse_mask_labels(mask_labels, has_mask=mask is not None)
    image_suffix = pick_suffix(image_name, IMAGE_SUFFIXES, "image")
    if image_suffix == dicom_scans.DICOM_ZIP:
        return dicom_scans.create_dicom_scan(
            session, settings, clinic_id, image=image, mask=mask, mask_name=mask_name,
            labels=labels, site=site, subject=subject, slices=slices,
        )
    mask_suffix = pick_suffix(mask_name, VOLUME_SUFFIXES, "mask") if mask is not None else None
    with tempfile.TemporaryDirectory(prefix="spottune-upload-") as tmp:
        image_path = Path(tmp) / f"image{image_suffix}"
        size = spool(image, image_path, settings.max_upload_bytes, "image")
        check_volume_file(image_path, image_suffix, settings.max_voxels, "image")
        try:
            volume = load_volume(image_path, max_voxels=settings.max_voxels)
        except (VolumeError, Exception) as exc:  # nibabel raises many types
            raise Invalid(f"image: {_clean(exc, image_path)}", code="invalid_image") from None
        mask_path = None
        if mask is not None and mask_suffix is not None:
            mask_path = Path(tmp) / f"mask{mask_suffix}"
            size += spool(mask, mask_path, settings.max_upload_bytes, "mask")
            check_volume_file(mask_path, mask_suffix, settings.max_voxels, "mask")
            try:
                binary = load_mask(mask_path, volume, labels)
                if labels is not None or not _zero_one(mask_path):
                    # Stored as the binary mask it stands for, so every reader sees 0/1.
                    mask_path.write_bytes(mask_to_nifti_bytes(binary, volume.affine))
                    mask_path = mask_path.rename(mask_path.with_name("mask.nii.gz"))
                    mask_suffix = ".nii.gz"
            except (VolumeError, Exception) as exc:  # nibabel raises many types
                raise Invalid(f"mask: {_clean(exc, mask_path)}", code="invalid_mask") from None
        check_annotated_slices(slices, volume.shape)
        check_storage(session, settings, clinic_id, size)
        with image_path.open("rb") as handle:
            image_blob = blobs.write_blob(session, clinic_id, handle, CONTENT_TYPES[image_suffix])
        mask_blob = None
        if mask_path is not None and mask_suffix is not None:
            with mask_path.open("rb") as handle:
                mask_blob = blobs.write_blob(session, clinic_id, handle, CONTENT_TYPES[mask_suffix])
    scan = Scan(
        id=uuid.uuid4(),
        clinic_id=clinic_id,
        site=site,
        subject=subject,
        image_blob_id=image_blob.id,
        mask_blob_id=mask_blob.id if mask_blob else None,
        annotated_slices=slices,
        shape=list(volume.shape),
        spacing=[round(s, 6) for s in volume.spacing],
        orientation="".join(nib.aff2axcodes(volume.affine)),
        sha256=image_blob.sha256,
    )
    session.add(scan)
    session.flush()
    return scan


def parse_mask_labels(text: str | None, *, has_mask: bool) -> LabelSet | None:
    """The ``mask_labels`` form field as a LabelSet (422 when malformed or without a mask)."""
    try:
        labels = parse_labels(text)
    except LabelError as exc:
        raise Invalid(str(exc), code="invalid_mask_labels") from None
    if labels is not None and not has_mask:
        raise Invalid("mask_labels needs a mask: upload the mask too", code="invalid_mask_labels")
    return labels


def _zero_one(path: Path) -> bool:
    """Whether the mask file already holds only 0 and 1 (then it is stored as uploaded)."""
    image: Any = nib.load(str(path))
    return set(np.unique(np.asanyarray(image.dataobj)).tolist()) <= {0, 1}


def _clean(exc: Exception, path: Path) -> str:
    """The error message without our temp file's name or path."""
    text = str(exc).replace(f"{path.name}: ", "", 1)
    return text.replace(str(path), "the file").replace(path.name, "the file")


def get_scan(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> Scan:
    scan = scan_repo.get(session, clinic_id, scan_id)
    if scan is None:
        raise NotFound(f"scan {scan_id} not found; list your scans with GET /v1/scans")
    return scan


def delete_scan(session: Session, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> None:
    """Delete the scan, its blobs and what jobs derived from it (masks, metrics, reports)."""
    scan = get_scan(session, clinic_id, scan_id)
    key = str(scan_id)
    for job in job_repo.active_jobs(session, clinic_id):
        used = {
            str(v)
            for f in ("train_scan_ids", "target_scan_ids", "scan_ids")
            for v in job.params.get(f, [])
        }
        if key in used:
            raise Conflict(
                f"scan {scan_id} is used by {job.status.value} job {job.id}; "
                "cancel the job or wait for it to finish",
                code="scan_in_use",
            )
    erase.erase_scan_derivatives(session, clinic_id, scan_id)
    dicom_scans.delete_dicom_identity(session, scan_id)
    blob_ids = [scan.image_blob_id, scan.mask_blob_id]
    session.delete(scan)
    session.flush()
    for scan_blob in blob_ids:
        if scan_blob is not None:
            blobs.delete_blob(session, scan_blob)
