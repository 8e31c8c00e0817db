"""The embedded default: `spottune serve` with no configuration (SQLite + filesystem broker in
its data folder, a real worker subprocess) takes a clinic from upload to a finished job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.factory import build_model
from tests.worker.helpers import phantom_files

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "spottune.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTTUNE_")}
    env |= {"SPOTTUNE_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spottune.cli.main", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp_path / "serve.log").read_text()[-3000:])
        time.sleep(0.3)
    yield base, env
    proc.send_signal(signal.SIGINT)  # Ctrl-C stops the API and its worker
    assert proc.wait(30) == 0
    log.close()
    assert "celery" not in subprocess.run(["ps", "-o", "args=", "--ppid", str(proc.pid)],
                                          capture_output=True, text=True).stdout


def test_serve_runs_a_segmentation_job_with_no_configuration(embedded, tmp_path: Path) -> None:
    base, env = embedded
    data = tmp_path / "data"
    assert (data / "spottune.db").is_file()  # migrated before the API started
    key = _run(env, "admin", "create-clinic", "embedded-clinic").strip()
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    config = ModelConfig(width=4, depth=2, blocks_per_stage=1,
                         preprocessing=Preprocessing(spacing_mm=(1.0, 1.0)))
    torch.manual_seed(0)
    weights = weights_to_bytes(build_model(config), config)
    model = client.post("/v1/models", files={"weights": ("tiny.safetensors", weights)},
                        data={"config": config.to_json(), "name": "tiny"})
    assert model.status_code == 201, model.text
    image, _ = phantom_files(seed=1, site="a")
    scan = client.post("/v1/scans", files={"image": ("head.nii.gz", image)})
    assert scan.status_code == 201, scan.text

    job = client.post("/v1/segmentations", json={"model_id": model.json()["id"],
                                                 "scan_ids": [scan.json()["id"]]})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 90
    while (state := client.get(f"/v1/jobs/{job.json()['id']}").json())["status"] in (
        "queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "succeeded", state
    masks = client.get(f"/v1/jobs/{state['id']}/masks").json()["items"]
    assert len(masks) == 1
    download = client.get(f"/v1/masks/{masks[0]['id']}")
    assert download.status_code == 200 and download.content[:2] == b"\x1f\x8b"
    assert (data / "broker").is_dir()  # the job went through the filesystem broker
    _assert_worker_leaves_the_api_a_core(_serve_pid(base), tmp_path / "serve.log")

    assert "revoked 1" in _run(env, "admin", "revoke-key", key)
    assert client.get("/v1/jobs").status_code == 401


def _serve_pid(base: str) -> int:
    """The `spottune serve` listening at ``base``."""
    argv = f"serve\0--port\0{base.rsplit(':', 1)[1]}\0"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if "spottune.cli.main" in (text := cmdline.read_text()) and argv in text:
                return int(cmdline.parent.name)
        except OSError:  # a process that ended meanwhile
            continue
    raise AssertionError(f"no spottune serve at {base}")


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _descendants(pid: int) -> list[int]:
    rows = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for row in rows.split("\n"):
        if row.strip():
            child, parent = map(int, row.split())
            children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _assert_worker_leaves_the_api_a_core(serve_pid: int, log: Path) -> None:
    """The worker of `serve` trains at nice 10 with one torch thread fewer than the cores, while
    the API beside it keeps its priority: polls stay fast while a job trains."""
    threads = max(1, len(os.sched_getaffinity(0)) - 1)
    started = [line for line in log.read_text().splitlines() if "torch threads" in line]
    assert started and all(f": {threads} torch threads, nice 10" in line for line in started)
    workers = _descendants(serve_pid)  # the worker and its pool process
    assert len(workers) >= 2 and all(_nice(pid) == 10 for pid in workers)
    assert _nice(serve_pid) == 0  # the API
