"""One embedded service for the client tests: `spottune serve` with no configuration (SQLite,
filesystem broker, a real worker process), quick webhook retries, and tiny NIfTI files on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.test_embedded import ROOT, _free_port
from tests.worker.helpers import phantom_files


@dataclass
class Service:
    url: str
    env: dict[str, str]

    def cli(self, *args: str, key: str | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "SPOTTUNE_URL": self.url}
        if key is not None:
            env["SPOTTUNE_API_KEY"] = key
        return subprocess.run([sys.executable, "-m", "spottune.cli.main", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def new_clinic(self, name: str) -> str:
        done = self.cli("admin", "create-clinic", name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("embedded")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTTUNE_")}
    env |= {"SPOTTUNE_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1",
            "SPOTTUNE_WEBHOOK_RETRY_BASE_S": "0.5", "SPOTTUNE_WEBHOOK_POLL_INTERVAL_S": "0.3"}
    port = _free_port()
    with (tmp / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spottune.cli.main", "serve", "--port", str(port)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp / "serve.log").read_text()[-3000:])
        time.sleep(0.3)
    yield Service(url=url, env=env)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Files:
    source_image: Path
    source_mask: Path
    target_image: Path
    target_mask: Path
    other_image: Path


@pytest.fixture(scope="package")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Tiny phantom heads (32x32x16 voxels, 1 mm): site "a" (source) and site "b" (clinic)."""
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for name, seed, site in (("source", 1, "a"), ("target", 2, "b"), ("other", 3, "b")):
        image, mask = phantom_files(seed, site)
        (folder / f"{name}.nii.gz").write_bytes(image)
        (folder / f"{name}_brain.nii.gz").write_bytes(mask)
        paths += [folder / f"{name}.nii.gz", folder / f"{name}_brain.nii.gz"]
    return Files(*paths[:4], other_image=paths[4])
