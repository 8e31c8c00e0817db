"""/v1/models: upload, list, show, download and delete segmentation models."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile as StarletteUploadFile

from spottune.app.api.deps import CurrentClinic, SessionDep, SessionFactoryDep, SettingsDep
from spottune.app.api.downloads import blob_response
from spottune.app.api.idempotency import IdempotencyDep, register_presenter
from spottune.app.api.presenters import model_out, model_outs
from spottune.app.repositories import models as model_repo
from spottune.app.schemas.common import (
    CONFLICT_RESPONSES,
    ERROR_RESPONSES,
    UPLOAD_RESPONSES,
    LimitQuery,
    OffsetQuery,
    Page,
)
from spottune.app.schemas.models import ModelOut
from spottune.app.services import models as service
from spottune.app.services.models import MAX_CONFIG_BYTES
from spottune.app.uploads import read_limited

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def _present(session: SessionDep, clinic_id: uuid.UUID, model_id: uuid.UUID) -> ModelOut | None:
    model = model_repo.get(session, clinic_id, model_id)
    return None if model is None else model_out(session, model)


register_presenter("models", _present)


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses=UPLOAD_RESPONSES, response_model=ModelOut
)
def upload_model(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clinic: CurrentClinic,
    idempotency: IdempotencyDep,
    weights: Annotated[UploadFile, File(description="weights as .safetensors (no pickles)")],
    config: Annotated[str | UploadFile, Form(description="model config JSON (text or file)")],
    name: Annotated[str | None, Form()] = None,
) -> ModelOut:
    """Upload a model; config and weights are validated by building the network."""
    config_text = (
        read_limited(config.file, MAX_CONFIG_BYTES, "config")
        if isinstance(config, StarletteUploadFile)
        else config
    )
    model = service.create_model(
        session, settings, clinic.id, weights=weights.file, config_text=config_text, name=name
    )
    idempotency.record(session, "models", model.id, status.HTTP_201_CREATED)
    session.commit()
    response.headers["Location"] = f"/v1/models/{model.id}"
    return model_out(session, model)


@router.get("", response_model=Page[ModelOut])
def list_models(
    session: SessionDep, clinic: CurrentClinic, limit: LimitQuery = 50, offset: OffsetQuery = 0
) -> Page[ModelOut]:
    items, total = model_repo.page(session, clinic.id, limit, offset)
    return Page(
        items=model_outs(session, items), total=total, limit=limit, offset=offset
    )


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> ModelOut:
    """Show a model with its lineage (parent_model_id, job_id, method) if it was adapted."""
    return model_out(session, service.get_model(session, clinic.id, model_id))


@router.get("/{model_id}/weights", response_class=StreamingResponse)
def download_weights(
    model_id: uuid.UUID, session: SessionDep, factory: SessionFactoryDep, clinic: CurrentClinic
) -> Response:
    model = service.get_model(session, clinic.id, model_id)
    return blob_response(session, factory, model.weights_blob_id, f"model-{model.id}.safetensors")


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT_RESPONSES)
def delete_model(model_id: uuid.UUID, session: SessionDep, clinic: CurrentClinic) -> Response:
    """Delete a model (409 while a queued or running job uses it)."""
    service.delete_model(session, clinic.id, model_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
