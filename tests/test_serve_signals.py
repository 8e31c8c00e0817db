"""`spottune serve` stopped by a signal while its worker trains: nothing is left running and the
job goes back to the queue, to run again when the service comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from spottune.app.admin import create_clinic
from spottune.core.db import create_db_engine, make_session_factory
from spottune.ml.checkpoint import weights_to_bytes
from spottune.ml.config import ModelConfig, Preprocessing
from spottune.ml.factory import build_model
from tests.faults.services import free_port, wait_until
from tests.worker.helpers import phantom_files

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[1]


class Serve:
    """One `spottune serve` process on an embedded data folder."""

    def __init__(self, data: Path, log: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTTUNE_")}
        self.env |= {"SPOTTUNE_DATA_DIR": str(data), "OMP_NUM_THREADS": "1",
                     "SPOTTUNE_HEARTBEAT_TIMEOUT_S": "600"}  # no reconciler repair: serve's own
        self.data, self.log = data, log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spottune.cli.main", "serve", "--port", str(self.port)],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "serve did not start", 60)

    def descendants(self) -> set[int]:
        """Pids of every process below `serve` (the worker and its pool)."""
        found, frontier = set(), {self.proc.pid}
        while frontier:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", ",".join(map(str, frontier))],
                                 capture_output=True, text=True).stdout
            frontier = {int(p) for p in out.split()} - found
            found |= frontier
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead: it only waits for its parent to read its status
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def _job(data: Path, job_id: str) -> dict[str, object]:
    with sqlite3.connect(data / "spottune.db", timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT status, attempts, worker FROM jobs WHERE id = ?",
                           (job_id.replace("-", ""),)).fetchone()
    return dict(row)


def _queued_messages(data: Path) -> str:
    return "".join(p.read_text() for p in (data / "broker" / "out").glob("*.msg"))


def _start_long_job(serve: Serve) -> tuple[httpx.Client, str]:
    engine = create_db_engine(f"sqlite:///{serve.data / 'spottune.db'}")
    key = create_clinic(f"c{time.monotonic_ns()}", session_factory=make_session_factory(engine)).key
    engine.dispose()
    client = httpx.Client(base_url=serve.base, headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
    config = ModelConfig(width=4, depth=2, blocks_per_stage=1,
                         preprocessing=Preprocessing(spacing_mm=(1.0, 1.0)))
    torch.manual_seed(0)
    model = client.post("/v1/models", data={"config": config.to_json()},
                        files={"weights": ("w.safetensors", weights_to_bytes(build_model(config),
                                                                             config))})
    assert model.status_code == 201, model.text
    image, mask = phantom_files(seed=1, site="b")
    scan = client.post("/v1/scans", files={"image": ("i.nii.gz", image),
                                           "mask": ("m.nii.gz", mask)})
    assert scan.status_code == 201, scan.text
    job = client.post("/v1/adaptations", json={
        "model_id": model.json()["id"], "train_scan_ids": [scan.json()["id"]],
        "target_scan_ids": [], "method": "finetune-all",
        "options": {"iterations": 1_000_000, "batch_size": 2}})
    assert job.status_code == 202, job.text
    job_id = str(job.json()["id"])

    def training() -> bool:
        state = client.get(f"/v1/jobs/{job_id}").json()
        return bool(state["status"] == "running" and state["progress"]["step"] > 0)

    wait_until(training, "the job did not start training", 90)
    return client, job_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_stops_the_worker_and_requeues_its_running_job(
    sig: signal.Signals, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    serve = Serve(data, tmp_path / "serve.log")
    below: set[int] = set()
    try:
        client, job_id = _start_long_job(serve)
        below = serve.descendants()
        assert below, "serve runs no worker"
        serve.proc.send_signal(sig)
        code = serve.proc.wait(40)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), serve.log.read_text()
        # the worker and its pool processes are gone, not reparented to init and still training
        wait_until(lambda: not any(_alive(p) for p in below), "the worker outlived serve", 30)
    finally:
        serve.kill()
        for pid in below:  # a failing run must not leave a worker training
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    job = _job(data, job_id)
    assert job["status"] == "queued" and job["attempts"] == 1 and job["worker"] is None, job
    assert job_id in _queued_messages(data), "the requeued job has no message in the broker"

    if sig != signal.SIGTERM:
        return
    # the service comes back: the job runs again (a second attempt) and can be cancelled
    again = Serve(data, tmp_path / "serve2.log")
    try:
        client = httpx.Client(base_url=again.base, headers=client.headers, timeout=30)
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 2,
                   "the requeued job did not run again", 60)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled",
                   "the job was not cancelled", 30)
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(30) == 0
    finally:
        again.kill()
    assert _job(data, job_id)["status"] == "cancelled"
