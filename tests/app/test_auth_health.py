"""Authentication, health probes and the error body."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.app import admin
from spottune.app.main import create_app
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx


def _assert_error(r: object, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer st_" + "x" * 43},
    ],
    ids=["missing", "basic", "empty", "malformed", "wrong"],
)
def test_bad_keys_are_401(client: TestClient, clinic_a: ClinicCtx, headers: dict[str, str]) -> None:
    r = client.get("/v1/models", headers=headers)
    _assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


def test_key_with_right_prefix_but_wrong_secret(client: TestClient, clinic_a: ClinicCtx) -> None:
    forged = clinic_a.key[:-4] + ("AAAA" if not clinic_a.key.endswith("AAAA") else "BBBB")
    _assert_error(client.get("/v1/models", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_revoked_key_is_401(
    client: TestClient, clinic_a: ClinicCtx, session_factory: sessionmaker[Session]
) -> None:
    assert client.get("/v1/models", headers=clinic_a.headers).status_code == 200
    assert admin.revoke_key(clinic_a.key, session_factory=session_factory) == 1
    _assert_error(client.get("/v1/models", headers=clinic_a.headers), 401)
    with pytest.raises(admin.AdminError):
        admin.revoke_key(clinic_a.prefix, session_factory=session_factory)


def test_admin_keys(session_factory: sessionmaker[Session], client: TestClient) -> None:
    made = admin.create_clinic("north", session_factory=session_factory)
    assert len(made.key) >= 40 and made.key.startswith(made.prefix)
    with pytest.raises(admin.AdminError):
        admin.create_clinic("north", session_factory=session_factory)
    second = admin.create_key("north", session_factory=session_factory)
    assert second.key != made.key and second.clinic_id == made.clinic_id
    for key in (made.key, second.key):
        r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    assert admin.revoke_clinic_keys("north", session_factory=session_factory) == 2


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_503_when_broker_or_database_down(
    settings: Settings, session_factory: sessionmaker[Session], clinic_a: ClinicCtx
) -> None:
    bad_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(bad_broker, session_factory)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["broker"] == "unreachable"
    down = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    bad_db = settings.model_copy(update={"database_url": down})
    with TestClient(create_app(bad_db), raise_server_exceptions=False) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"] == "unreachable"
        r = c.get("/v1/models", headers=clinic_a.headers)
        _assert_error(r, 503, "database_unavailable")
        assert "Traceback" not in r.text


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/adaptations" in spec["paths"] and "/v1/masks/{mask_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_bad_uuid_use_error_body(client: TestClient, clinic_a: ClinicCtx) -> None:
    _assert_error(client.get("/v1/nothing", headers=clinic_a.headers), 404, "not_found")
    _assert_error(client.get("/v1/models/xyz", headers=clinic_a.headers), 422, "validation_error")
