"""/v1/scans: upload (validated), list, show, download and delete scans."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from spottune.app.api.deps import CurrentClinic, SessionDep, SessionFactoryDep, SettingsDep
from spottune.app.api.downloads import blob_response
from spottune.app.api.idempotency import IdempotencyDep, register_presenter
from spottune.app.api.presenters import scan_out, scan_outs
from spottune.app.errors import NotFound
from spottune.app.repositories import scans as scan_repo
from spottune.app.schemas.common import (
    CONFLICT_RESPONSES,
    ERROR_RESPONSES,
    UPLOAD_RESPONSES,
    LimitQuery,
    OffsetQuery,
    Page,
)
from spottune.app.schemas.scans import ScanOut
from spottune.app.services import scans as service
from spottune.core.formats import SUFFIX_OF
from spottune.core.models import Blob

router = APIRouter(prefix="/v1/scans", tags=["scans"], responses=ERROR_RESPONSES)


def _present(session: SessionDep, clinic_id: uuid.UUID, scan_id: uuid.UUID) -> ScanOut | None:
    scan = scan_repo.get(session, clinic_id, scan_id)
    return None if scan is None else scan_out(session, scan)


register_presenter("scans", _present)


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses=UPLOAD_RESPONSES, response_model=ScanOut
)
def upload_scan(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
    image: Annotated[
        UploadFile,
        File(description="3D image: .nii, .nii.gz or .mgz, or a .zip of one DICOM MR series"),
    ],
    mask: Annotated[
        UploadFile | None,
        File(description="mask on the image's grid: NIfTI/MGH, or for a DICOM series a DICOM SEG "
             "(.dcm) or NIfTI on the series' grid"),
    ] = None,
    site: Annotated[str | None, Form()] = None,
    subject: Annotated[str | None, Form()] = None,
    annotated_slices: Annotated[
        str | None, Form(description="annotated slice indices: JSON list [3, 7] or comma list 3,7")
    ] = None,
    mask_labels: Annotated[
        str | None,
        Form(description="the mask's foreground values: 255, a range 1-255 or a list 2,3,41,42 "
             "(default: a mask with one non-zero value is binary)"),
    ] = None,
) -> ScanOut:
    """Upload a scan; it is fully validated before anything is stored."""
    scan = service.create_scan(
        session,
        settings,
        clinic.id,
        image=image.file,
        image_name=image.filename,
        mask=mask.file if mask is not None else None,
        mask_name=mask.filename if mask is not None else None,
        site=site,
        subject=subject,
        annotated_slices=annotated_slices,
        mask_labels=mask_labels,
    )
    idempotency.record(session, "scans", scan.id, status.HTTP_201_CREATED)
    session.commit()
    response.headers["Location"] = f"/v1/scans/{scan.id}"
    return scan_out(session, scan)


@router.get("", response_model=Page[ScanOut])
def list_scans(
    session: SessionDep,
    clinic: CurrentClinic,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
    site: Annotated[str | None, Query()] = None,
    annotated: Annotated[bool | None, Query(description="true: with a mask")] = None,
) -> Page[ScanOut]:
    items, total = scan_repo.page(session, clinic.id, limit, offset, site=site, annotated=annotated)
    return Page(
        items=scan_outs(session, items), total=total, limit=limit, offset=offset
    )


@router.get("/{scan_id}", response_model=ScanOut)
def get_scan(scan_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> ScanOut:
    return scan_out(session, service.get_scan(session, clinic.id, scan_id))


def _filename(session: SessionDep, blob_id: uuid.UUID, stem: str) -> str:
    blob = session.get(Blob, blob_id)
    suffix = SUFFIX_OF.get(blob.content_type if blob else "", ".nii.gz")
    return f"{stem}{suffix}"


@router.get("/{scan_id}/image", response_class=StreamingResponse)
def download_image(
    scan_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    scan = service.get_scan(session, clinic.id, scan_id)
    name = _filename(session, scan.image_blob_id, f"scan-{scan.id}")
    return blob_response(session, factory, scan.image_blob_id, name)


@router.get("/{scan_id}/mask", response_class=StreamingResponse)
def download_mask(
    scan_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    scan = service.get_scan(session, clinic.id, scan_id)
    if scan.mask_blob_id is None:
        raise NotFound(
            f"scan {scan_id} has no mask; upload the scan again with one", code="no_mask"
        )
    name = _filename(session, scan.mask_blob_id, f"scan-{scan.id}-mask")
    return blob_response(session, factory, scan.mask_blob_id, name)


@router.delete("/{scan_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT_RESPONSES)
def delete_scan(scan_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> Response:
    """Delete a scan with the masks and metrics derived from it (409 while a job uses it)."""
    service.delete_scan(session, clinic.id, scan_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
