"""/v1/masks: download a produced mask."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from spottune.app.api.deps import CurrentClinic, SessionDep, SessionFactoryDep
from spottune.app.api.downloads import blob_response
from spottune.app.errors import NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/masks", tags=["masks"], responses=ERROR_RESPONSES)


@router.get("/{mask_id}", response_class=StreamingResponse)
def download_mask(
    mask_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    """The mask as .nii.gz on the scan's own grid and affine."""
    mask = job_repo.mask(session, clinic.id, mask_id)
    if mask is None:
        raise NotFound(
            f"mask {mask_id} not found; list a job's masks with GET /v1/jobs/{{id}}/masks"
        )
    return blob_response(
        session, factory, mask.blob_id, f"mask-{mask.id}.nii.gz", "application/gzip"
    )
