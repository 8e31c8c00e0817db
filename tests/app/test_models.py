"""POST/GET/DELETE /v1/models: round trip, lineage, pagination, and refused uploads."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.app.helpers import TINY_CONFIG, ClinicCtx, counts, tiny_weights, upload_model


def test_round_trip(client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes) -> None:
    created = upload_model(client, clinic_a, weights_bytes)
    assert created["parent_model_id"] is None and created["job_id"] is None
    assert created["config"]["width"] == 4 and created["size_bytes"] == len(weights_bytes)
    shown = client.get(f"/v1/models/{created['id']}", headers=clinic_a.headers).json()
    assert shown == created
    r = client.get(f"/v1/models/{created['id']}/weights", headers=clinic_a.headers)
    assert r.status_code == 200 and r.content == weights_bytes
    assert "attachment" in r.headers["content-disposition"]


def test_config_as_file_and_location(
    client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes
) -> None:
    r = client.post(
        "/v1/models",
        headers=clinic_a.headers,
        files={
            "weights": ("w.safetensors", weights_bytes),
            "config": ("c.json", json.dumps(TINY_CONFIG).encode()),
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/models/{r.json()['id']}"


def test_pagination(client: TestClient, clinic_a: ClinicCtx, weights_bytes: bytes) -> None:
    ids = {upload_model(client, clinic_a, weights_bytes)["id"] for _ in range(3)}
    seen = set()
    for offset in (0, 2):
        page = client.get(f"/v1/models?limit=2&offset={offset}", headers=clinic_a.headers).json()
        assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == offset
        seen |= {m["id"] for m in page["items"]}
    assert seen == ids
    r = client.get("/v1/models?limit=0", headers=clinic_a.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


def test_delete(
    client: TestClient,
    clinic_a: ClinicCtx,
    weights_bytes: bytes,
    session_factory: sessionmaker[Session],
) -> None:
    before = counts(session_factory)
    model = upload_model(client, clinic_a, weights_bytes)
    assert client.delete(f"/v1/models/{model['id']}", headers=clinic_a.headers).status_code == 204
    assert client.get(f"/v1/models/{model['id']}", headers=clinic_a.headers).status_code == 404
    assert counts(session_factory) == before


def _safetensors_with_header(header: dict[str, object]) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def _bad_uploads() -> list[tuple[str, dict[str, object], int, str]]:
    good = tiny_weights()
    wrong_shape = tiny_weights({"width": 8, "depth": 2, "blocks_per_stage": 1})
    wrong_keys = tiny_weights({"width": 4, "depth": 2, "blocks_per_stage": 2})
    cfg = json.dumps(TINY_CONFIG)
    return [
        (
            "pickle",
            {"weights": ("w.pt", pickle.dumps({"a": 1})), "config": cfg},
            422,
            "invalid_weights",
        ),
        (
            "torch-zip",
            {"weights": ("w.safetensors", b"PK\x03\x04" + b"0" * 64), "config": cfg},
            422,
            "invalid_weights",
        ),
        (
            "garbage",
            {"weights": ("w.safetensors", b"hello world, not weights"), "config": cfg},
            422,
            "invalid_weights",
        ),
        ("empty", {"weights": ("w.safetensors", b""), "config": cfg}, 422, "empty_file"),
        (
            "header-only",
            {
                "weights": (
                    "w.safetensors",
                    _safetensors_with_header(
                        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
                    ),
                ),
                "config": cfg,
            },
            422,
            "invalid_weights",
        ),
        (
            "wrong-shapes",
            {"weights": ("w.safetensors", wrong_shape), "config": cfg},
            422,
            "invalid_weights",
        ),
        (
            "wrong-keys",
            {"weights": ("w.safetensors", wrong_keys), "config": cfg},
            422,
            "invalid_weights",
        ),
        (
            "absurd-config",
            {"weights": ("w.safetensors", good), "config": json.dumps({"width": 10_000_000})},
            422,
            "invalid_config",
        ),
        (
            "unknown-config-key",
            {"weights": ("w.safetensors", good), "config": json.dumps({"widht": 4})},
            422,
            "invalid_config",
        ),
        (
            "malformed-json",
            {"weights": ("w.safetensors", good), "config": "{width: 4"},
            422,
            "invalid_config",
        ),
        ("missing-config", {"weights": ("w.safetensors", good)}, 422, "validation_error"),
        (
            "oversize",
            {"weights": ("w.safetensors", b"\0" * (3 * 1024 * 1024)), "config": cfg},
            413,
            "too_large",
        ),
    ]


@pytest.mark.parametrize("case", _bad_uploads(), ids=lambda c: c[0])
def test_refused_uploads_store_nothing(
    client: TestClient,
    clinic_a: ClinicCtx,
    session_factory: sessionmaker[Session],
    case: tuple[str, dict[str, object], int, str],
) -> None:
    _, fields, status, code = case
    before = counts(session_factory)
    files = {k: v for k, v in fields.items() if isinstance(v, tuple)}
    data = {k: v for k, v in fields.items() if isinstance(v, str)}
    r = client.post("/v1/models", headers=clinic_a.headers, files=files, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert counts(session_factory) == before


def test_wrong_weights_message_names_the_key(client: TestClient, clinic_a: ClinicCtx) -> None:
    wrong = tiny_weights({"width": 8, "depth": 2, "blocks_per_stage": 1})
    r = client.post(
        "/v1/models",
        headers=clinic_a.headers,
        files={"weights": ("w.safetensors", wrong)},
        data={"config": json.dumps(TINY_CONFIG)},
    )
    assert r.status_code == 422 and "." in r.json()["error"]["message"]


def test_request_over_body_limit_is_413_before_parsing(
    client: TestClient, clinic_a: ClinicCtx
) -> None:
    r = client.post(
        "/v1/models",
        headers={**clinic_a.headers, "Content-Type": "application/json"},
        content=b"0" * (6 * 1024 * 1024),
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
