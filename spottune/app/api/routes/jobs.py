"""/v1/adaptations, /v1/segmentations, /v1/pretrainings and /v1/jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from spottune.app.api.deps import CurrentClinic, SessionDep, SessionFactoryDep, SettingsDep
from spottune.app.api.downloads import blob_response
from spottune.app.api.idempotency import Idempotency, IdempotencyDep, register_presenter
from spottune.app.errors import NotFound
from spottune.app.repositories import jobs as job_repo
from spottune.app.schemas.common import (
    CONFLICT_RESPONSES,
    ERROR_RESPONSES,
    JOB_RESPONSES,
    POLL_RESPONSES,
    LimitQuery,
    OffsetQuery,
    Page,
)
from spottune.app.schemas.jobs import (
    AdaptationRequest,
    MaskOut,
    PolicyOut,
    PretrainingRequest,
    SegmentationRequest,
)
from spottune.app.security import presented_key
from spottune.app.services import erase
from spottune.app.services import jobs as service
from spottune.contract import JobOut, PolicyReport
from spottune.core.job_view import job_out
from spottune.core.models import Job, JobKind, JobStatus

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
_ACCEPTED = {
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": JobOut,
    "responses": JOB_RESPONSES,
}


def _present(session: SessionDep, clinic_id: uuid.UUID, job_id: uuid.UUID) -> JobOut | None:
    job = job_repo.get(session, clinic_id, job_id)
    return None if job is None else job_out(job)


register_presenter("jobs", _present)


# First of the router: status polls are the most frequent request, and routes match in order.
# Most polls never get here: spottune.app.status_poll answers them in front of the middleware
# stack, as this route would. This route documents the poll and answers the rest (an id spelled
# otherwise, a request with a body).
@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses=POLL_RESPONSES,
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def get_job(job_id: uuid.UUID, request: Request) -> Response:
    """The job's status, progress and result. Poll it with the last ETag in `If-None-Match`:
    an unchanged job answers 304 without a body."""
    # The key is read here rather than through a dependency: resolving one costs a poll more
    # CPU than the header takes to parse.
    scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
    key = presented_key(scheme or None, credentials or None)
    found = await request.app.state.status_reader.read(key, job_id)
    # ConditionalGetMiddleware turns this into a 304 when If-None-Match names the ETag.
    return Response(found.body, media_type="application/json", headers={"ETag": found.etag})


def _accepted(
    response: Response, session: SessionDep, job: Job, idempotency: Idempotency
) -> JobOut:
    idempotency.record(session, "jobs", job.id, status.HTTP_202_ACCEPTED)
    session.commit()  # the task is sent only after this commit (see tasks.enqueue_after_commit)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


@router.post("/v1/adaptations", **_ACCEPTED)  # type: ignore[arg-type]
def create_adaptation(
    body: AdaptationRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
) -> JobOut:
    """Adapt a model to the clinic's scanner from a few annotated scans."""
    job = service.create_adaptation(session, settings, clinic.id, body)
    return _accepted(response, session, job, idempotency)


@router.post("/v1/segmentations", **_ACCEPTED)  # type: ignore[arg-type]
def create_segmentation(
    body: SegmentationRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
) -> JobOut:
    """Segment scans with a model (inference only)."""
    job = service.create_segmentation(session, settings, clinic.id, body)
    return _accepted(response, session, job, idempotency)


@router.post("/v1/pretrainings", **_ACCEPTED)  # type: ignore[arg-type]
def create_pretraining(
    body: PretrainingRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
) -> JobOut:
    """Train a source model from annotated scans."""
    job = service.create_pretraining(session, settings, clinic.id, body)
    return _accepted(response, session, job, idempotency)


@router.get("/v1/jobs", response_model=Page[JobOut])
def list_jobs(
    session: SessionDep,
    clinic: CurrentClinic,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    model_id: Annotated[
        uuid.UUID | None, Query(description="jobs that use this model or produced it")
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="ISO 8601 time, e.g. 2026-11-30T12:00:00Z")
    ] = None,
) -> Page[JobOut]:
    """The clinic's jobs, newest first, filtered by status, kind, model and creation time."""
    items, total = job_repo.page(
        session, clinic.id, limit, offset, status=status, kind=kind, model_id=model_id,
        created_after=created_after,
    )
    return Page(items=[job_out(j) for j in items], total=total, limit=limit, offset=offset)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={
        202: {"model": JobOut, "description": "running: the worker stops within seconds"},
        **CONFLICT_RESPONSES,
    },
)
def cancel_job(
    job_id: uuid.UUID,
    response: Response,
    session: SessionDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
) -> JobOut:
    """Queued: cancelled at once (200). Running: the worker stops within seconds (202)."""
    job = service.cancel_job(session, clinic.id, job_id)
    code = status.HTTP_200_OK if job.status.terminal else status.HTTP_202_ACCEPTED
    idempotency.record(session, "jobs", job.id, code)
    session.commit()
    response.status_code = code
    return job_out(job)


@router.delete(
    "/v1/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT_RESPONSES
)
def delete_job(job_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> Response:
    """Delete a finished job and its artefacts: masks, metrics, policy, report, adapted model
    (409 while it is queued or running)."""
    erase.delete_job(session, clinic.id, job_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/jobs/{job_id}/policy", response_model=PolicyOut)
def get_policy(job_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> PolicyOut:
    """Per gate and per stage: how often the fine-tuned twin was chosen; lambda, method, policy."""
    job = service.get_job(session, clinic.id, job_id)
    policy = job_repo.policy(session, job.id)
    if policy is None:
        raise NotFound(
            f"job {job_id} has no policy yet; it exists once a spottune adaptation succeeds",
            code="policy_not_ready",
        )
    report = PolicyReport.from_record(policy.data)
    return PolicyOut(job_id=job.id, **report.model_dump())


def _report(session: SessionDep, clinic: CurrentClinic, job_id: uuid.UUID) -> tuple[Job, object]:
    job = service.get_job(session, clinic.id, job_id)
    report = job_repo.report(session, job.id)
    if report is None:
        raise NotFound(
            f"job {job_id} has no report yet; poll GET /v1/jobs/{job_id} until it succeeds",
            code="report_not_ready",
        )
    return job, report


@router.get("/v1/jobs/{job_id}/report", response_class=StreamingResponse)
def get_report(
    job_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    """Self-contained HTML report (policy chart, training curve, metrics, overlays)."""
    job, report = _report(session, clinic, job_id)
    return blob_response(
        session,
        factory,
        report.html_blob_id,  # type: ignore[attr-defined]
        f"report-{job.id}.html",
        "text/html; charset=utf-8",
        inline=True,
    )


@router.get("/v1/jobs/{job_id}/report.png", response_class=StreamingResponse)
def get_report_png(
    job_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    """The policy chart alone (PNG)."""
    job, report = _report(session, clinic, job_id)
    png = report.png_blob_id  # type: ignore[attr-defined]
    if png is None:
        raise NotFound(f"job {job_id} has no policy chart", code="report_not_ready")
    return blob_response(session, factory, png, f"policy-{job.id}.png", "image/png", inline=True)


@router.get("/v1/jobs/{job_id}/masks", response_model=Page[MaskOut])
def list_job_masks(
    job_id: uuid.UUID,
    session: SessionDep,
    clinic: CurrentClinic,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> Page[MaskOut]:
    """The masks the job produced, one per scan (download each with GET /v1/masks/{id})."""
    job = service.get_job(session, clinic.id, job_id)
    items, total = job_repo.masks_page(session, job.id, limit, offset)
    return Page(
        items=[MaskOut.model_validate(m) for m in items], total=total, limit=limit, offset=offset
    )
