"""/v1/webhooks: registration, listing, deletion, URL checks and clinic isolation."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from spottune.app.main import create_app
from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx

SECRET = "a-long-shared-secret"


def test_register_list_and_delete(client: TestClient, clinic_a: ClinicCtx, clinic_b) -> None:
    r = client.post(
        "/v1/webhooks",
        headers=clinic_a.headers,
        json={"url": "http://127.0.0.1:8123/hook", "secret": SECRET, "description": "pacs"},
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["url"] == "http://127.0.0.1:8123/hook" and "secret" not in hook
    listed = client.get("/v1/webhooks", headers=clinic_a.headers).json()
    assert [h["id"] for h in listed["items"]] == [hook["id"]]
    assert client.get("/v1/webhooks", headers=clinic_b.headers).json()["total"] == 0
    deliveries = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=clinic_a.headers)
    assert deliveries.status_code == 200 and deliveries.json()["items"] == []
    # another clinic sees nothing and deletes nothing
    url = f"/v1/webhooks/{hook['id']}"
    assert client.get(f"{url}/deliveries", headers=clinic_b.headers).status_code == 404
    assert client.delete(url, headers=clinic_b.headers).status_code == 404
    assert client.delete(url, headers=clinic_a.headers).status_code == 204
    assert client.get(url, headers=clinic_a.headers).status_code == 404


def test_bad_registrations_say_what_to_fix(client: TestClient, clinic_a: ClinicCtx) -> None:
    for body, field in (
        ({"url": "ftp://example.org/x", "secret": SECRET}, "http"),
        ({"url": "http://user:pw@example.org/x", "secret": SECRET}, "credentials"),
        ({"url": "https://example.org/x", "secret": "short"}, "secret"),
        ({"url": "https://example.org/x", "secret": SECRET, "events": ["x"]}, "events"),
    ):
        r = client.post("/v1/webhooks", headers=clinic_a.headers, json=body)
        assert r.status_code == 422, body
        assert field in r.json()["error"]["message"], r.json()
    assert client.get("/v1/webhooks", headers=clinic_a.headers).json()["total"] == 0


def test_production_refuses_private_destinations(
    settings: Settings, session_factory: sessionmaker[Session], clinic_a: ClinicCtx, tmp_path: Path
) -> None:
    locked = settings.model_copy(update={"webhook_allow_private_networks": False})
    with TestClient(create_app(locked, session_factory)) as client:
        for url in ("http://127.0.0.1:80/x", "http://10.1.2.3/x", "http://localhost/x",
                    "http://[::1]/x", "http://169.254.169.254/latest"):
            r = client.post(
                "/v1/webhooks", headers=clinic_a.headers, json={"url": url, "secret": SECRET}
            )
            assert r.status_code == 422 and "private" in r.json()["error"]["message"], url
        ok = client.post(
            "/v1/webhooks",
            headers=clinic_a.headers,
            json={"url": "https://93.184.215.14/hook", "secret": SECRET},
        )
        assert ok.status_code == 201, ok.text
