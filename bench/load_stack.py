"""The service stacks of the load benchmark, as real processes, and their seed data.

- ``sqlite``: the embedded default, ``spottune serve`` (SQLite, the filesystem broker, and the
  worker it starts beside the API at a lower priority).
- ``postgres``: uvicorn (uvloop, httptools) on a fresh Postgres database, and a Celery worker on
  Redis; the worker shares this machine, so it gets the same niceness and thread cap as the
  embedded one.

The API's rate limit is off: the benchmark measures what a request costs, not the limiter.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = {
    "width": 4,
    "depth": 2,
    "blocks_per_stage": 1,
    "preprocessing": {"spacing_mm": [1.0, 1.0]},
}
SHAPE = (32, 32, 16)
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    name: str
    base: str
    key: str
    api_pid: int
    logs: list[Path]
    setup: dict[str, Any] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(predicate: Any, what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.2)


def _api_up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _base_env(tmp: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPOTTUNE_")},
        "PYTHONPATH": str(ROOT),
        "SPOTTUNE_DATA_DIR": str(tmp / "data"),
        "SPOTTUNE_RATE_LIMIT_PER_MINUTE": "0",
    }


def _clinic_key(url: str) -> str:
    from spottune.app import admin
    from spottune.core.db import create_db_engine, make_session_factory

    engine = create_db_engine(url)
    try:
        return admin.create_clinic("load", session_factory=make_session_factory(engine)).key
    finally:
        engine.dispose()


def start_sqlite(stack: ExitStack, tmp: Path) -> Stack:
    """``spottune serve`` with no configuration: the API and, beside it, its worker."""
    env = _base_env(tmp)
    port, log = free_port(), tmp / "serve.log"
    serve = _start(
        [sys.executable, "-m", "spottune.cli.main", "serve", "--port", str(port)], env, log
    )
    stack.callback(_stop, serve, signal.SIGINT)  # Ctrl-C: the API, then its worker
    base = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _api_up(base), "spottune serve", 90, serve)
    _wait_for(lambda: b" ready." in log.read_bytes(), "the embedded worker", 120, serve)
    key = _clinic_key(f"sqlite:///{tmp / 'data' / 'spottune.db'}")
    return Stack("sqlite", base, key, serve.pid, [log], {
        "command": "spottune serve (SQLite, filesystem broker, its worker beside the API)",
    })


def start_postgres(stack: ExitStack, tmp: Path, admin_dsn: str, redis_url: str) -> Stack:
    """uvicorn on a fresh database of ``admin_dsn``'s server and a Celery worker on Redis."""
    import redis

    from spottune.app.migrate import upgrade_head
    from spottune.cli.service_commands import embedded_worker_env
    from spottune.core.settings import Settings

    redis.Redis.from_url(redis_url).flushdb()
    name = f"spottune_load_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    stack.callback(_drop_database, admin_dsn, name)
    url = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    upgrade_head(url=url)
    key = _clinic_key(url)
    env = {**_base_env(tmp), "SPOTTUNE_DATABASE_URL": url, "SPOTTUNE_BROKER_URL": redis_url}
    port, api_log, worker_log = free_port(), tmp / "api.log", tmp / "worker.log"
    api = _start([
        sys.executable, "-m", "uvicorn", "spottune.app.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        "--timeout-keep-alive", "75", "--loop", "uvloop", "--http", "httptools",
    ], env, api_log)
    stack.callback(_stop, api)
    shares = embedded_worker_env(Settings(_env_file=None), usable_cores())
    worker = _start([
        sys.executable, "-m", "celery", "-A", "spottune.worker.celery_app", "worker", "-Q",
        "gpu", "-c", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        "-n", f"load-{secrets.token_hex(3)}@%h",
    ], {**env, **shares}, worker_log)
    stack.callback(_stop, worker)
    base = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _api_up(base), "the API", 60, api)
    _wait_for(lambda: b" ready." in worker_log.read_bytes(), "the worker", 120, worker)
    return Stack("postgres", base, key, api.pid, [api_log, worker_log], {
        "command": "uvicorn --loop uvloop --http httptools (1 process); celery worker -c 1",
        "worker_env": shares,
    })


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def nifti_gz(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), compresslevel=1)


def seed(client: httpx.Client, n_scans: int) -> dict[str, Any]:
    """A model, annotated scans and a finished segmentation (its masks)."""
    from spottune.ml.checkpoint import weights_to_bytes
    from spottune.ml.config import ModelConfig
    from spottune.ml.factory import build_model
    from spottune.ml.synthetic import make_phantom

    config = ModelConfig.model_validate(TINY_CONFIG)
    r = client.post(
        "/v1/models",
        data={"config": json.dumps(TINY_CONFIG), "name": "load"},
        files={"weights": ("w.safetensors", weights_to_bytes(build_model(config), config))},
    )
    r.raise_for_status()
    model = r.json()["id"]
    scans = []
    for i in range(n_scans):
        image, mask = make_phantom(SHAPE, seed=i, site="b")
        r = client.post(
            "/v1/scans",
            files={"image": ("i.nii.gz", nifti_gz(image)), "mask": ("m.nii.gz", nifti_gz(mask))},
        )
        r.raise_for_status()
        scans.append(r.json()["id"])
    r = client.post("/v1/segmentations", json={"model_id": model, "scan_ids": scans})
    r.raise_for_status()
    segmentation = r.json()["id"]
    deadline = time.monotonic() + 180
    while (job := client.get(f"/v1/jobs/{segmentation}").json())["status"] != "succeeded":
        if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"seeding segmentation ended {job['status']}: {job['error']}")
        time.sleep(0.3)
    return {
        "model": model, "scans": scans, "segmentation": segmentation,
        "masks": job["result"]["mask_ids"],
    }


def start_adaptation(client: httpx.Client, ids: dict[str, Any]) -> str:
    """A long adaptation, running when this returns."""
    r = client.post("/v1/adaptations", json={
        "model_id": ids["model"],
        "train_scan_ids": ids["scans"][:2],
        "target_scan_ids": ids["scans"][2:],
        "options": {"iterations": 1_000_000, "batch_size": 4},
    })
    r.raise_for_status()
    job = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job}").json()["progress"]["step"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the adaptation job did not start training")
        time.sleep(0.3)
    return str(job)
