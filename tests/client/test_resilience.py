"""Errors carry the API's code and message; lost answers and refused connections are retried
without duplicating anything (network faults injected between the client and a real server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from spottune.client import ApiError, Client, ConnectionFailed
from tests.client.conftest import Files, Service
from tests.test_embedded import _free_port


class FlakyNetwork(httpx.HTTPTransport):
    """The real network, except that chosen requests fail: ``before`` ones never reach the
    server (connection refused), ``after`` ones reach it and their answer is lost, ``busy`` ones
    are answered 503 by a proxy in front of it (as Caddy does while the API restarts)."""

    def __init__(self, before: int = 0, after: int = 0, busy: int = 0) -> None:
        super().__init__()
        self.before, self.after, self.busy = before, after, busy
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("idempotency-key"))
        if self.busy > 0:
            self.busy -= 1
            return httpx.Response(503, headers={"Retry-After": "0"}, request=request,
                                  json={"error": {"code": "busy", "message": "retry"}})
        if self.before > 0:
            self.before -= 1
            raise httpx.ConnectError("connection refused (injected)", request=request)
        response = super().handle_request(request)
        if self.after > 0:
            self.after -= 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset before the answer (injected)", request=request)
        return response


def _client(service: Service, key: str, network: FlakyNetwork) -> Client:
    http = httpx.Client(base_url=service.url, transport=network, timeout=30)
    return Client(service.url, key, http=http, backoff_s=0.05)


def test_a_lost_answer_is_retried_with_the_same_key_and_creates_one_scan(
    service: Service, files: Files
) -> None:
    key = service.new_clinic("retry-clinic")
    network = FlakyNetwork(before=1, after=1)
    scan = _client(service, key, network).upload_scan(files.other_image, site="retried")
    assert len(network.keys) == 3 and len(set(network.keys)) == 1 and network.keys[0]
    scans = list(Client(service.url, key).scans(site="retried"))
    assert [s.id for s in scans] == [scan.id]


def test_503_answers_are_retried_and_the_job_is_queued_once(
    service: Service, files: Files
) -> None:
    key = service.new_clinic("busy-clinic")
    plain = Client(service.url, key)
    scan = plain.upload_scan(files.source_image, mask=files.source_mask)
    model = plain.upload_model(*_tiny_model(files.source_image.parent))
    network = FlakyNetwork(busy=2, after=1)
    job = _client(service, key, network).segment(model, [scan])
    assert len(network.keys) == 4 and len(set(network.keys)) == 1
    assert [j.id for j in plain.jobs(kind="segmentation")] == [job.id]
    assert _client(service, key, FlakyNetwork(busy=1)).job(job.id).id == job.id


def _tiny_model(folder: Path) -> tuple[Path, Path]:
    from spottune.ml.checkpoint import save_checkpoint
    from spottune.ml.factory import build_model
    from tests.worker.helpers import tiny_config

    config = tiny_config()
    save_checkpoint(build_model(config), config, folder / "tiny.safetensors")
    return folder / "tiny.safetensors", folder / "tiny.json"


def test_api_errors_carry_code_and_message(service: Service) -> None:
    client = Client(service.url, service.new_clinic("error-clinic"))
    missing = uuid.uuid4()
    with pytest.raises(ApiError) as caught:
        client.segment(missing, [uuid.uuid4()])
    assert caught.value.status_code == 404 and caught.value.code == "not_found"
    assert str(missing) in caught.value.message
    with pytest.raises(ApiError) as unauthorized:
        list(Client(service.url, "st_" + "x" * 40).jobs())
    assert unauthorized.value.status_code == 401


def test_an_unreachable_service_fails_after_its_retries() -> None:
    client = Client(f"http://127.0.0.1:{_free_port()}", "k", retries=2, backoff_s=0.01)
    with pytest.raises(ConnectionFailed, match="after 3 attempts"):
        client.job(uuid.uuid4())


def test_listings_walk_every_page(service: Service, files: Files) -> None:
    client = Client(service.url, service.new_clinic("paging-clinic"), page_size=2)
    made = [client.upload_scan(files.other_image, subject=f"s{i}") for i in range(3)]
    assert sorted(s.id for s in client.scans()) == sorted(s.id for s in made)  # two pages


def test_the_client_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTTUNE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="create-clinic"):
        Client("http://127.0.0.1:1")
    monkeypatch.setenv("SPOTTUNE_API_KEY", "from-env")
    monkeypatch.setenv("SPOTTUNE_URL", "http://example.invalid:9/")
    assert Client().url == "http://example.invalid:9"
