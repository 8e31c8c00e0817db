"""ORM rows -> response bodies (the few fields that are computed or joined).

A page of rows is presented with a fixed number of queries, whatever its length: the rows'
blobs and DICOM identities are loaded together (one ``IN`` query each), never one per row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from spottune.app.schemas.models import ModelOut
from spottune.app.schemas.scans import DicomOut, ScanOut
from spottune.core.models import Blob, Model, Scan, ScanDicom
from spottune.core.queries import by_ids


def model_outs(session: Session, models: Sequence[Model]) -> list[ModelOut]:
    blobs = by_ids(session, Blob.id, [m.weights_blob_id for m in models])
    return [
        ModelOut(
            id=model.id,
            name=model.name,
            config=model.config,
            size_bytes=model.size_bytes,
            sha256=blob.sha256 if (blob := blobs.get(model.weights_blob_id)) else "",
            parent_model_id=model.parent_model_id,
            job_id=model.job_id,
            method=model.method,
            created_at=model.created_at,
        )
        for model in models
    ]


def model_out(session: Session, model: Model) -> ModelOut:
    return model_outs(session, [model])[0]


def scan_outs(session: Session, scans: Sequence[Scan]) -> list[ScanOut]:
    blob_ids = [b for s in scans for b in (s.image_blob_id, s.mask_blob_id) if b is not None]
    blobs = by_ids(session, Blob.id, blob_ids)
    dicoms = by_ids(session, ScanDicom.scan_id, [s.id for s in scans])
    outs = []
    for scan in scans:
        sizes = [blobs[b].size for b in (scan.image_blob_id, scan.mask_blob_id) if b in blobs]
        dicom = dicoms.get(scan.id)
        outs.append(ScanOut(
            id=scan.id,
            site=scan.site,
            subject=scan.subject,
            shape=scan.shape,
            spacing=scan.spacing,
            orientation=scan.orientation,
            sha256=scan.sha256,
            size_bytes=sum(sizes),
            has_mask=scan.mask_blob_id is not None,
            annotated_slices=scan.annotated_slices,
            created_at=scan.created_at,
            dicom=DicomOut.model_validate(dicom) if dicom is not None else None,
        ))
    return outs


def scan_out(session: Session, scan: Scan) -> ScanOut:
    return scan_outs(session, [scan])[0]
