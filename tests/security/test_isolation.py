"""Clinic isolation and API keys: every /v1 route, every kind of bad key, no secret in logs.

tests/app/test_isolation.py checks that foreign ids answer 404; here the foreign and missing
answers must be identical byte for byte once the id is masked, on every route that takes an id.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from spottune.app import admin, security
from spottune.app.api import deps
from spottune.app.main import create_app
from spottune.app.services import job_status
from spottune.core import blobs
from spottune.core.models import Mask
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx, counts, make_clinic, upload_model, upload_scan

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def v1_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every /v1 operation the app documents."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, operations in sorted(paths.items())
        if path.startswith("/v1")
        for method in sorted(operations)
    ]


def _fill(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), path)


def _bad_headers(revoked: str) -> dict[str, dict[str, str | bytes]]:
    return {
        "missing": {},
        "empty": {"Authorization": ""},
        "bearer-only": {"Authorization": "Bearer"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "too-long": {"Authorization": "Bearer st_" + "a" * 500},
        "non-ascii": {"Authorization": ("Bearer st_\u00e9" + "a" * 40).encode()},
        "wrong": {"Authorization": "Bearer st_" + "x" * 43},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }


def test_every_v1_route_refuses_bad_keys(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session]
) -> None:
    routes = v1_routes(client)
    assert len(routes) >= 19, routes  # a new route is covered automatically
    revoked = make_clinic("revoked-clinic", session_factory)
    admin.revoke_key(revoked.key, session_factory=session_factory)
    before = counts(session_factory)
    for label, headers in _bad_headers(revoked.key).items():
        for method, path in routes:
            # an invalid body too: the key is checked before the body is even read
            r = client.request(method, _fill(path), headers=headers, content=b"{not json")
            assert r.status_code == 401, (label, method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized", r.text
            assert r.headers["www-authenticate"] == "Bearer"
    assert counts(session_factory) == before


def test_unauthenticated_upload_is_refused_before_the_body_is_read(client: TestClient) -> None:
    consumed = 0

    def body() -> object:
        nonlocal consumed
        for _ in range(50):
            consumed += 1
            yield b"\0" * 1024 * 1024

    r = client.post(
        "/v1/scans",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
        content=body(),  # type: ignore[arg-type]
    )
    assert r.status_code == 401
    assert consumed <= 2, f"{consumed} MiB of an unauthenticated body were read"


def test_keys_compared_in_constant_time_and_stored_hashed(
    clinic_a: ClinicCtx, session_factory: sessionmaker[Session]
) -> None:
    assert "hmac.compare_digest" in inspect.getsource(security.key_matches)
    source = inspect.getsource(security.match_key)
    assert "key_matches(" in source and "break" not in source and "==" not in source
    for caller in (deps.authenticate, job_status.status_body):  # every way a key is checked
        assert "match_key(" in inspect.getsource(caller)
    with session_factory() as session:
        dump = " ".join(str(row) for row in session.execute(text("SELECT * FROM api_keys")).all())
    assert clinic_a.key not in dump and security.hash_key(clinic_a.key) in dump


@pytest.fixture()
def foreign(
    client: TestClient,
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    session_factory: sessionmaker[Session],
    broker: redis.Redis,
) -> dict[str, str]:
    """Clinic B's model, scan, job, mask and webhook ids, and clinic A's own model and scan."""
    model = str(upload_model(client, clinic_b, weights_bytes)["id"])
    scan = str(upload_scan(client, clinic_b, phantom[0], phantom[1])["id"])
    job = client.post(
        "/v1/segmentations", headers=clinic_b.headers, json={"model_id": model, "scan_ids": [scan]}
    ).json()["id"]
    with session_factory.begin() as session:
        clinic = uuid.UUID(str(clinic_b.id))
        blob = blobs.write_blob(session, clinic, phantom[1], "application/gzip")
        mask = Mask(clinic_id=clinic, job_id=uuid.UUID(job), scan_id=uuid.UUID(scan),
                    model_id=uuid.UUID(model), blob_id=blob.id)  # fmt: skip
        session.add(mask)
    webhook = client.post("/v1/webhooks", headers=clinic_b.headers,
                          json={"url": "http://127.0.0.1:9/b", "secret": "b" * 20}).json()["id"]
    return {
        "model_id": model, "scan_id": scan, "job_id": job, "mask_id": str(mask.id),
        "webhook_id": webhook,
        "own_model": str(upload_model(client, clinic_a, weights_bytes)["id"]),
        "own_scan": str(upload_scan(client, clinic_a, phantom[0], phantom[1])["id"]),
    }  # fmt: skip


def _id_requests(client: TestClient, ids: dict[str, str]) -> list[tuple[str, str, object]]:
    """Every /v1 route that names an object, with ``ids`` filled in (path or body)."""
    requests: list[tuple[str, str, object]] = []
    for method, path in v1_routes(client):
        params = re.findall(r"\{([a-z_]+)\}", path)
        if params:
            requests.append((method, path.format(**{p: ids[p] for p in params}), None))
    own_model, own_scan = ids["own_model"], ids["own_scan"]
    requests += [
        ("POST", "/v1/adaptations", {"model_id": ids["model_id"], "train_scan_ids": [own_scan]}),
        ("POST", "/v1/adaptations", {"model_id": own_model, "train_scan_ids": [ids["scan_id"]]}),
        ("POST", "/v1/adaptations", {"model_id": own_model, "train_scan_ids": [own_scan],
                                     "target_scan_ids": [ids["scan_id"]]}),
        ("POST", "/v1/segmentations", {"model_id": ids["model_id"], "scan_ids": [own_scan]}),
        ("POST", "/v1/segmentations", {"model_id": own_model, "scan_ids": [ids["scan_id"]]}),
        ("POST", "/v1/pretrainings", {"train_scan_ids": [ids["scan_id"]]}),
    ]  # fmt: skip
    return requests


def _masked(r: object) -> tuple[int, str, str]:
    return (
        r.status_code,  # type: ignore[attr-defined]
        r.headers["content-type"],  # type: ignore[attr-defined]
        UUID_RE.sub("<id>", r.text),  # type: ignore[attr-defined]
    )


def test_foreign_ids_indistinguishable_from_missing(
    client: TestClient,
    clinic_a: ClinicCtx,
    foreign: dict[str, str],
    session_factory: sessionmaker[Session],
) -> None:
    missing = {k: (v if k.startswith("own_") else str(uuid.uuid4())) for k, v in foreign.items()}
    foreign_requests = _id_requests(client, foreign)
    missing_requests = _id_requests(client, missing)
    assert len(foreign_requests) >= 20
    before = counts(session_factory)
    for (method, path, body), (_, missing_path, missing_body) in zip(
        foreign_requests, missing_requests, strict=True
    ):
        seen = client.request(method, path, headers=clinic_a.headers, json=body)
        absent = client.request(method, missing_path, headers=clinic_a.headers, json=missing_body)
        assert seen.status_code == 404, (method, path, seen.text)
        assert _masked(seen) == _masked(absent), (method, path)
        assert "clinic" not in seen.text.lower()
    assert counts(session_factory) == before


def test_no_key_or_file_name_in_logs(
    client: TestClient,
    clinic_a: ClinicCtx,
    phantom: tuple[bytes, bytes],
    weights_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    broker: redis.Redis,
) -> None:
    secret_name = f"patient-{uuid.uuid4().hex[:8]}-doe"
    caplog.set_level(logging.DEBUG)
    headers = clinic_a.headers
    scan = client.post(
        "/v1/scans", headers=headers,
        files={"image": (f"{secret_name}.nii.gz", phantom[0]),
               "mask": (f"{secret_name}-mask.nii.gz", phantom[1])},
    ).json()  # fmt: skip
    client.post("/v1/scans", headers=headers, files={"image": (f"{secret_name}.nii.gz", b"bad")})
    client.post("/v1/scans", headers=headers, files={"image": (f"{secret_name}.png", b"x")})
    model = client.post(
        "/v1/models", headers=headers, data={"config": '{"width": 4, "depth": 2}'},
        files={"weights": (f"{secret_name}.safetensors", weights_bytes)},
    ).json()  # fmt: skip
    client.post(
        "/v1/segmentations",
        headers=headers,
        json={"model_id": model.get("id", str(uuid.uuid4())), "scan_ids": [scan["id"]]},
    )
    for path in ("/v1/scans", "/v1/models", "/v1/jobs", f"/v1/scans/{uuid.uuid4()}"):
        client.get(path, headers=headers)
    client.get("/v1/scans", headers={"Authorization": f"Bearer {clinic_a.key}x"})
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged at DEBUG: the capture is not working"
    assert clinic_a.key not in logged and clinic_a.key[12:] not in logged
    assert secret_name not in logged


def test_limits_are_per_clinic_configurable_and_clear(
    clinic_a: ClinicCtx,
    clinic_b: ClinicCtx,
    settings: Settings,
    session_factory: sessionmaker[Session],
    weights_bytes: bytes,
    phantom: tuple[bytes, bytes],
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPOTTUNE_CLINIC_MAX_CONCURRENT_JOBS", "2")
    monkeypatch.setenv(
        "SPOTTUNE_CLINIC_MAX_STORED_BYTES", str(len(weights_bytes) + 2 * len(phantom[0]))
    )
    env = Settings(database_url=settings.database_url, broker_url=settings.broker_url,
                   data_dir=settings.data_dir, max_voxels=settings.max_voxels)  # fmt: skip
    assert env.clinic_max_concurrent_jobs == 2
    with TestClient(create_app(env, session_factory)) as c:
        ids = {}
        for clinic in (clinic_a, clinic_b):
            model = upload_model(c, clinic, weights_bytes)["id"]
            ids[clinic.key] = (model, upload_scan(c, clinic, phantom[0])["id"])
        model, scan = ids[clinic_a.key]
        body = {"model_id": model, "scan_ids": [scan]}
        for _ in range(2):
            assert (
                c.post("/v1/segmentations", headers=clinic_a.headers, json=body).status_code == 202
            )
        r = c.post("/v1/segmentations", headers=clinic_a.headers, json=body)
        assert r.status_code == 429 and r.headers["retry-after"]
        assert "limit 2" in r.json()["error"]["message"] and "wait" in r.json()["error"]["message"]
        other = {"model_id": ids[clinic_b.key][0], "scan_ids": [ids[clinic_b.key][1]]}
        assert c.post("/v1/segmentations", headers=clinic_b.headers, json=other).status_code == 202
        # storage: the model and one scan are stored; a second scan with a mask does not fit
        before = counts(session_factory)
        r = c.post(
            "/v1/scans",
            headers=clinic_a.headers,
            files={"image": ("x.nii.gz", phantom[0]), "mask": ("m.nii.gz", phantom[1])},
        )
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "storage_quota_exceeded" and "delete" in error["message"]
        assert counts(session_factory) == before
        assert upload_scan(c, clinic_b, phantom[0])["id"]  # clinic B's quota is its own
