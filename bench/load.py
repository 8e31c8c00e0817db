"""Load benchmark: the real service under concurrent clients while a worker trains.

Starts uvicorn (127.0.0.1, a free port) on a fresh Postgres database, a Celery worker on a
Redis broker, seeds a clinic with a tiny model, scans and masks, keeps an adaptation job
training in the background, then runs N concurrent clients for D seconds that poll job status,
list scans and download masks. Writes bench/results/load-<machine>.json and prints a table.

    python bench/load.py --duration 60 --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import random
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TINY_CONFIG = {
    "width": 4,
    "depth": 2,
    "blocks_per_stage": 1,
    "preprocessing": {"spacing_mm": [1.0, 1.0]},
}
SHAPE = (32, 32, 16)
ENDPOINTS = ("job status", "list scans", "download mask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def create_database(admin_dsn: str) -> str:
    name = f"spottune_load_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate: Any, what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.2)


def nifti_gz(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), compresslevel=1)


def seed(client: httpx.Client, n_scans: int, iterations: int) -> dict[str, Any]:
    """A model, annotated scans, a finished segmentation (masks) and a training adaptation."""
    from spottune.ml.checkpoint import weights_to_bytes
    from spottune.ml.config import ModelConfig
    from spottune.ml.network import build_model
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
        time.sleep(0.5)
    masks = job["result"]["mask_ids"]
    r = client.post(
        "/v1/adaptations",
        json={
            "model_id": model,
            "train_scan_ids": scans[:2],
            "target_scan_ids": scans[2:],
            "options": {"iterations": iterations, "batch_size": 4},
        },
    )
    r.raise_for_status()
    return {"model": model, "scans": scans, "masks": masks, "adaptation": r.json()["id"]}


async def client_loop(
    client: httpx.AsyncClient,
    ids: dict[str, Any],
    until: float,
    samples: dict[str, list[float]],
    errors: dict[str, int],
    rng: random.Random,
) -> None:
    while time.monotonic() < until:
        endpoint = rng.choice(ENDPOINTS)
        path = {
            "job status": f"/v1/jobs/{ids['adaptation']}",
            "list scans": "/v1/scans?limit=50",
            "download mask": f"/v1/masks/{rng.choice(ids['masks'])}",
        }[endpoint]
        start = time.perf_counter()
        try:
            r = await client.get(path)
            await r.aread()
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        samples[endpoint].append(time.perf_counter() - start)
        if not ok:
            errors[endpoint] += 1


async def run_load(
    base: str, key: str, ids: dict[str, Any], clients: int, duration: float
) -> tuple[dict[str, list[float]], dict[str, int], float]:
    samples: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    errors = dict.fromkeys(ENDPOINTS, 0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as client:
        started = time.monotonic()
        until = started + duration
        await asyncio.gather(
            *(
                client_loop(client, ids, until, samples, errors, random.Random(i))
                for i in range(clients)
            )
        )
    return samples, errors, time.monotonic() - started


def summarise(
    samples: dict[str, list[float]], errors: dict[str, int], elapsed: float
) -> dict[str, Any]:
    out = {}
    for endpoint, values in samples.items():
        ms = np.array(values) * 1000 if values else np.zeros(1)
        out[endpoint] = {
            "requests": len(values),
            "errors": errors[endpoint],
            "rps": round(len(values) / elapsed, 1),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
            "max_ms": round(float(ms.max()), 1),
        }
    return out


def table(summary: dict[str, Any]) -> str:
    rows = [
        "| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        rows.append(
            f"| {name} | {s['requests']} | {s['rps']} | {s['p50_ms']} | {s['p95_ms']} "
            f"| {s['p99_ms']} | {s['max_ms']} | {s['errors']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin DSN; a fresh database is created and dropped",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="broker (flushed)")
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument(
        "--machine", default=re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower())
    )
    args = parser.parse_args()

    import redis

    from spottune.app import admin
    from spottune.app.db import create_db_engine, make_session_factory
    from spottune.app.migrate import upgrade_head

    redis.Redis.from_url(args.redis).flushdb()
    name = create_database(args.postgres)
    url = (
        args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        + "/"
        + name
    )
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="spottune-load-") as tmp:
        stack.callback(drop_database, args.postgres, name)
        upgrade_head(url=url)
        engine = create_db_engine(url)
        stack.callback(engine.dispose)
        key = admin.create_clinic("load", session_factory=make_session_factory(engine)).key
        env = {
            **os.environ,
            "SPOTTUNE_DATABASE_URL": url,
            "SPOTTUNE_BROKER_URL": args.redis,
            "SPOTTUNE_DATA_DIR": tmp,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        port = free_port()
        api = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "spottune.app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env,
            Path(tmp) / "api.log",
        )
        stack.callback(stop, api)
        worker_log = Path(tmp) / "worker.log"
        worker = start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "spottune.worker.celery_app",
                "worker",
                "-Q",
                "gpu",
                "-c",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"load-{secrets.token_hex(3)}@%h",
            ],
            env,
            worker_log,
        )
        stack.callback(stop, worker)
        base = f"http://127.0.0.1:{port}"

        def api_up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(api_up, "the API", 60, api)
        wait_for(lambda: b"ready." in worker_log.read_bytes(), "the worker", 90, worker)
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            ids = seed(client, args.scans, iterations=1_000_000)
            wait = time.monotonic() + 60
            while client.get(f"/v1/jobs/{ids['adaptation']}").json()["status"] != "running":
                if time.monotonic() > wait:
                    raise RuntimeError("the adaptation job did not start")
                time.sleep(0.5)
            step_before = client.get(f"/v1/jobs/{ids['adaptation']}").json()["progress"]["step"]
            samples, errors, elapsed = asyncio.run(
                run_load(base, key, ids, args.clients, args.duration)
            )
            job = client.get(f"/v1/jobs/{ids['adaptation']}").json()
            client.post(f"/v1/jobs/{ids['adaptation']}/cancel")
        summary = summarise(samples, errors, elapsed)
        result = {
            "benchmark": "load",
            "machine": machine(),
            "clients": args.clients,
            "duration_s": round(elapsed, 1),
            "endpoints": summary,
            "total_requests": sum(s["requests"] for s in summary.values()),
            "total_errors": sum(s["errors"] for s in summary.values()),
            "background_job": {
                "status_after": job["status"],
                "steps_during_load": job["progress"]["step"] - step_before,
            },
            "setup": {
                "uvicorn_workers": 1,
                "celery_concurrency": 1,
                "scans": args.scans,
                "model": TINY_CONFIG,
                "scan_shape": SHAPE,
            },
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{args.machine}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.clients} clients for {elapsed:.0f} s on {result['machine']['cpu']} "
        f"({result['machine']['usable_cores']} cores); adaptation trained "
        f"{result['background_job']['steps_during_load']} steps meanwhile\n"
    )
    print(table(summary))
    print(f"\nerrors: {result['total_errors']} of {result['total_requests']}; wrote {out}")


if __name__ == "__main__":
    main()
