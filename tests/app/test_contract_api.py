"""The job contract as clinics meet it: typed options in OpenAPI, validation scans, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.contract import AdaptationOptions, PretrainingOptions, SegmentationOptions
from tests.app.helpers import ClinicCtx, counts, upload_scan
from tests.app.test_jobs import _messages, _setup

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_imports_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys, spottune.app.main; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("schema", "model"),
    [("AdaptationOptions", AdaptationOptions), ("PretrainingOptions", PretrainingOptions),
     ("SegmentationOptions", SegmentationOptions)],
)
def test_openapi_lists_every_option_with_default_and_bounds(
    client: TestClient, schema: str, model: type
) -> None:
    components = client.get("/openapi.json").json()["components"]["schemas"]
    properties = components[schema]["properties"]
    assert set(properties) == set(model.model_fields)
    for name, prop in properties.items():
        assert prop.get("description"), name
        default = model.model_fields[name].get_default(call_default_factory=True)
        if default is not None:  # FastAPI leaves out null defaults; "unset" is described
            assert prop["default"] == (list(default) if isinstance(default, tuple) else default)
    iterations = properties.get("iterations")
    if iterations is not None:
        assert iterations["minimum"] == 1 and iterations["maximum"] == 1_000_000
    if schema == "AdaptationOptions":
        assert properties["iterations"]["default"] == 6000
        assert set(properties["policy"]["enum"]) == {"instance", "global"}


def test_openapi_types_the_requests_and_the_policy(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    adaptation = components["AdaptationRequest"]["properties"]
    assert adaptation["options"]["$ref"].endswith("/AdaptationOptions")
    assert "validation_scan_ids" in adaptation
    assert set(adaptation["method"]["enum"]) >= {"spottune", "finetune-first", "none"}
    assert components["PretrainingRequest"]["properties"]["options"]["$ref"].endswith(
        "/PretrainingOptions")
    assert components["SegmentationRequest"]["properties"]["options"]["$ref"].endswith(
        "/SegmentationOptions")
    policy = spec["paths"]["/v1/jobs/{job_id}/policy"]["get"]["responses"]["200"]
    ref = policy["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = components[ref]["properties"]
    assert {"gates", "stages", "lambda_reg", "method", "policy"} <= set(fields)
    gate = components["PolicyGate"]["properties"]
    assert set(gate) == {"name", "stage", "finetune_probability", "frequency"}


def test_validation_scans_are_checked_like_train_scans(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> None:
    model, train, target = _setup(client, clinic_a, weights_bytes, phantom)
    held_out = str(upload_scan(client, clinic_a, phantom[0], phantom[1])["id"])
    foreign = str(upload_scan(client, clinic_b, phantom[0], phantom[1])["id"])
    partial = str(upload_scan(client, clinic_a, phantom[0], phantom[1],
                              annotated_slices="1,2")["id"])
    base = {"model_id": model, "train_scan_ids": [train]}
    cases = [
        ([foreign], 404, "not_found"),  # another clinic's scan reads as a missing one
        ([str(uuid.uuid4())], 404, "not_found"),
        ([target], 422, "scan_without_mask"),
        ([train], 422, "invalid_request"),  # also a train scan: it would not be held out
        ([partial], 422, "invalid_request"),  # scored as a whole volume: needs a full mask
    ]
    before = counts(session_factory)
    for ids, status, code in cases:
        r = client.post("/v1/adaptations", headers=clinic_a.headers,
                        json={**base, "validation_scan_ids": ids})
        assert r.status_code == status, (ids, r.text)
        assert r.json()["error"]["code"] == code
    assert counts(session_factory) == before and _messages(broker) == []

    r = client.post("/v1/adaptations", headers=clinic_a.headers,
                    json={**base, "validation_scan_ids": [held_out, held_out]})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["validation_scan_ids"] == [held_out]
    assert _messages(broker) == [r.json()["id"]]


def test_options_are_refused_with_their_range(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    model, train, _ = _setup(client, clinic_a, weights_bytes, phantom)
    r = client.post("/v1/adaptations", headers=clinic_a.headers, json={
        "model_id": model, "train_scan_ids": [train], "options": {"learning_rate": 5.0}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options"
    assert "options.learning_rate" in r.json()["error"]["message"]
    assert "5.0" in r.json()["error"]["message"]
    r = client.post("/v1/pretrainings", headers=clinic_a.headers, json={
        "train_scan_ids": [train], "options": {"width": 128, "depth": 6}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options"
    assert "width * 2**depth" in r.json()["error"]["message"]


def test_one_spacing_number_means_isotropic(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes, phantom: tuple[bytes, bytes]
) -> None:
    _, train, _ = _setup(client, clinic_a, weights_bytes, phantom)
    r = client.post("/v1/pretrainings", headers=clinic_a.headers, json={
        "train_scan_ids": [train], "options": {"spacing_mm": 2.0, "width": 4, "depth": 2}})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["options"]["spacing_mm"] == [2.0, 2.0]
