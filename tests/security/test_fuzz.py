"""Schemathesis against the app's own OpenAPI document, authenticated as a clinic.

Every operation gets a bounded number of generated requests (valid and invalid); none may
answer 5xx, and every answer must be a documented status, content type and body schema.
Path ids are real objects of the clinic in every other example, so the success paths
(downloads, lists, deletes, job creation) are fuzzed too, not only the 404s.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.core import blobs
from spottune.core.models import Mask
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx, upload_model, upload_scan

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
UPLOADS = {("POST", "/v1/scans"), ("POST", "/v1/models")}
TALLY: Counter[str] = Counter()  # status codes seen and operations exercised, for the summary


# The document does not depend on the database: load it from an app that never connects
# (pytest 9 breaks schemathesis' lazy ``from_fixture``); requests go to the test's own app.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(database_url="sqlite://"), sessionmaker())
)


@pytest.fixture()
def real_ids(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> dict[str, str]:
    """The clinic's own model, scan, job and mask (ids substituted into generated requests)."""
    model = str(upload_model(client, clinic_a, weights_bytes)["id"])
    scan = str(upload_scan(client, clinic_a, phantom[0], phantom[1])["id"])
    r = client.post(
        "/v1/segmentations", headers=clinic_a.headers, json={"model_id": model, "scan_ids": [scan]}
    )
    job = str(r.json()["id"])
    with session_factory.begin() as session:
        clinic = uuid.UUID(str(clinic_a.id))
        blob = blobs.write_blob(session, clinic, phantom[1], "application/gzip")
        mask = Mask(clinic_id=clinic, job_id=uuid.UUID(job), scan_id=uuid.UUID(scan),
                    model_id=uuid.UUID(model), blob_id=blob.id)  # fmt: skip
        session.add(mask)
    return {"model_id": model, "scan_id": scan, "job_id": job, "mask_id": str(mask.id)}


_turn = itertools.count()


def _use_real_ids(case: Any, ids: dict[str, str]) -> None:
    """Every other example: swap generated UUIDs for the clinic's real objects."""
    if next(_turn) % 2:
        return
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict):
        if "model_id" in case.body:
            case.body["model_id"] = ids["model_id"]
        for field in ("scan_ids", "train_scan_ids", "target_scan_ids"):
            if isinstance(case.body.get(field), list) and case.body[field]:
                case.body[field] = [ids["scan_id"]]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_and_never_fails(
    case: Any, client: TestClient, clinic_a: ClinicCtx, real_ids: dict[str, str]
) -> None:
    _use_real_ids(case, real_ids)
    upload = (case.method.upper(), case.path) in UPLOADS
    # Schemathesis cannot produce valid NIfTI or safetensors files: for uploads only the
    # "never a server error" check applies (their refusals are tested in test_hostile_uploads).
    checks = [not_a_server_error] if upload else CHECKS
    try:
        response = case.call_and_validate(app=client.app, headers=clinic_a.headers, checks=checks)
    finally:
        TALLY[case.operation.label] += 0  # the operation was exercised
    TALLY[str(response.status_code)] += 1


def test_fuzz_summary() -> None:
    """Runs after the fuzzing above: enough requests were made and none failed with 5xx."""
    statuses = {k: v for k, v in TALLY.items() if k.isdigit()}
    operations = [k for k in TALLY if not k.isdigit()]
    print(f"fuzzing: {sum(statuses.values())} requests, {len(operations)} operations, {statuses}")
    assert len(operations) >= 20 and sum(statuses.values()) >= 10 * len(operations)
    assert not [code for code in statuses if code.startswith("5")], statuses
