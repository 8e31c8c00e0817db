"""/v1/masks: download a produced mask, as NIfTI or as a DICOM SEG on its source series."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from spottune.app.api.deps import CurrentClinic, SessionDep, SessionFactoryDep
from spottune.app.api.downloads import blob_response
from spottune.app.errors import NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.schemas.common import ERROR_RESPONSES
from spottune.app.services import dicom_scans

router = APIRouter(prefix="/v1/masks", tags=["masks"], responses=ERROR_RESPONSES)

MaskFormat = Literal["nifti", "dicom-seg"]


@router.get("/{mask_id}", response_class=StreamingResponse)
def download_mask(
    mask_id: uuid.UUID,
    session: SessionDep,
    factory: SessionFactoryDep,
    clinic: CurrentClinic,
    format: Annotated[
        MaskFormat | None,
        Query(description="nifti (.nii.gz) or dicom-seg (a DICOM Segmentation referencing the "
              "source series); default: the format the scan was uploaded in"),
    ] = None,
) -> Response:
    """The mask on the scan's own grid: NIfTI with the scan's affine, or a DICOM SEG."""
    mask = job_repo.mask(session, clinic.id, mask_id)
    if mask is None:
        raise NotFound(
            f"mask {mask_id} not found; list a job's masks with GET /v1/jobs/{{id}}/masks"
        )
    if format is None:
        is_dicom = dicom_scans.dicom_identity(session, mask.scan_id) is not None
        format = "dicom-seg" if is_dicom else "nifti"
    if format == "dicom-seg":
        data = dicom_scans.mask_as_dicom_seg(session, mask)
        headers = {
            "Content-Disposition": f'attachment; filename="mask-{mask.id}.dcm"',
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
        }
        return Response(data, media_type="application/dicom", headers=headers)
    return blob_response(
        session, factory, mask.blob_id, f"mask-{mask.id}.nii.gz", "application/gzip"
    )
