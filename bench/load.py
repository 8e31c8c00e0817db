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
import json
import os
import random
import re
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load_stack import (
    ROOT,
    SHAPE,
    TINY_CONFIG,
    create_database,
    drop_database,
    free_port,
    machine,
    seed,
    start,
    stop,
    wait_for,
)

RESULTS = ROOT / "bench" / "results"
ENDPOINTS = ("job status", "list scans", "download mask")
ERROR_KINDS: Counter[str] = Counter()


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
            kind = None if r.status_code == 200 else f"{r.status_code} {r.text[:120]}"
        except httpx.HTTPError as exc:
            kind = f"{type(exc).__name__} {exc}"[:160]
        samples[endpoint].append(time.perf_counter() - start)
        if kind is not None:
            errors[endpoint] += 1
            ERROR_KINDS[f"{endpoint}: {kind}"] += 1


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
    from spottune.app.migrate import upgrade_head
    from spottune.core.db import create_db_engine, make_session_factory

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
                "--timeout-keep-alive",
                "75",
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
            "error_kinds": dict(ERROR_KINDS),
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
