"""ORM rows -> response bodies (the few fields that are computed or joined)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from spottune.app.schemas.models import ModelOut
from spottune.app.schemas.scans import DicomOut, ScanOut
from spottune.core.models import Blob, Model, Scan, ScanDicom


def model_out(session: Session, model: Model) -> ModelOut:
    blob = session.get(Blob, model.weights_blob_id)
    return ModelOut(
        id=model.id,
        name=model.name,
        config=model.config,
        size_bytes=model.size_bytes,
        sha256=blob.sha256 if blob else "",
        parent_model_id=model.parent_model_id,
        job_id=model.job_id,
        method=model.method,
        created_at=model.created_at,
    )


def scan_out(session: Session, scan: Scan) -> ScanOut:
    sizes = [session.get(Blob, b) for b in (scan.image_blob_id, scan.mask_blob_id) if b]
    dicom = session.get(ScanDicom, scan.id)
    return ScanOut(
        id=scan.id,
        site=scan.site,
        subject=scan.subject,
        shape=scan.shape,
        spacing=scan.spacing,
        orientation=scan.orientation,
        sha256=scan.sha256,
        size_bytes=sum(b.size for b in sizes if b is not None),
        has_mask=scan.mask_blob_id is not None,
        annotated_slices=scan.annotated_slices,
        created_at=scan.created_at,
        dicom=DicomOut.model_validate(dicom) if dicom is not None else None,
    )
