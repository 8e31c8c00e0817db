"""The real server's logs (uvicorn at DEBUG with its access log) hold no key and no file name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from spottune.core.settings import Settings
from tests.app.helpers import ClinicCtx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_uvicorn_logs_hold_no_secret(
    settings: Settings,
    clinic_a: ClinicCtx,
    phantom: tuple[bytes, bytes],
    weights_bytes: bytes,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SPOTTUNE_DATABASE_URL": settings.database_url,
        "SPOTTUNE_BROKER_URL": settings.broker_url,
        "SPOTTUNE_DATA_DIR": str(tmp_path / "data"),
        "SPOTTUNE_MAX_VOXELS": str(settings.max_voxels),
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "spottune.app.main:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "debug", "--access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    secret_name = f"patient-{uuid.uuid4().hex[:8]}-doe"
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        with httpx.Client(base_url=base, headers=clinic_a.headers, timeout=30) as c:
            ok = c.post("/v1/scans", files={"image": (f"{secret_name}.nii.gz", phantom[0])})
            assert ok.status_code == 201, ok.text
            assert c.post("/v1/scans", files={"image": (f"{secret_name}.nii.gz", b"x")}).is_error
            c.post(
                "/v1/models",
                data={"config": "{"},
                files={"weights": (f"{secret_name}.pt", weights_bytes)},
            )
            c.get("/v1/scans")
            c.get(f"/v1/scans/{ok.json()['id']}/image")
            c.get("/v1/jobs", headers={"Authorization": f"Bearer {clinic_a.key}zz"})
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "GET /v1/scans HTTP/1.1" in text, text[-2000:]  # the access log was on
    assert clinic_a.key not in text and clinic_a.key[12:] not in text
    assert secret_name not in text
