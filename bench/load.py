"""Load benchmark: job status polls against the real service, open-loop and at saturation.

For each stack (``sqlite``: ``spottune serve``, the embedded default; ``postgres``: uvicorn,
Postgres, Redis and a Celery worker) it seeds a clinic (a tiny model, scans, a finished
segmentation), then measures:

1. **open loop, idle** - N clients each polling a job's status R times a second, as clinics do
   (conditional GETs with the last ETag, like ``spottune.client``), nothing training;
2. **open loop, training** - the same while an adaptation trains on the worker;
3. **saturation** - connections polling as fast as answers come, while the adaptation trains:
   requests per second and the API process's CPU time per request (its /proc CPU time over the
   window divided by the requests served), with ``/healthz`` the same way as the floor of any
   request in this run.

Latencies are counted from each request's scheduled time (no coordinated omission); every answer
carries ``Server-Timing``, so the server's share is reported beside them. The generator runs in
processes of its own and reports its CPU use, so the results show it was not the bottleneck.
Writes bench/results/load-<machine>.json and prints a table.

    python bench/load.py            # both stacks, about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from load_gen import Generator, Plan
from load_stack import (
    ROOT,
    SHAPE,
    TINY_CONFIG,
    Stack,
    cpu_seconds,
    seed,
    start_adaptation,
    start_postgres,
    start_sqlite,
    usable_cores,
)

RESULTS = ROOT / "bench" / "results"
GENERATOR_BUSY = 0.7  # a generator process above this share of a core may be the bottleneck


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values)
    out: dict[str, float | None] = {
        f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)
    }
    out["max"] = round(float(a.max()), 2)
    return out


def _phase(gen: Generator, stack: Stack, plan: Plan, job_url: str | None) -> dict[str, Any]:
    """Run ``plan``; what the clients saw, what the API spent, how busy the generator was."""
    step_before = _step(stack, job_url)
    pending = gen.start(plan)
    time.sleep(max(0.0, plan.start - time.monotonic()))
    cpu0, wall0 = cpu_seconds(stack.api_pid), time.monotonic()
    time.sleep(max(0.0, plan.start + plan.duration - time.monotonic()))
    cpu1, wall1 = cpu_seconds(stack.api_pid), time.monotonic()
    tallies = pending.get()
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for t in tallies:
        for code, n in t["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
        for kind, n in t["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    served = sum(n for code, n in statuses.items() if code in ("200", "304"))
    busy = [t["cpu_s"] / t["wall_s"] for t in tallies if t["wall_s"] > 0]
    api_cpu = cpu1 - cpu0
    return {
        "paths": sorted(set(plan.paths)),
        "clients": plan.clients,
        "rate_per_client": plan.rate or None,
        "seconds": round(wall1 - wall0, 2),
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "errors": sum(errors.values()),  # transport errors and answers >= 400
        "error_kinds": errors,
        "requests_per_s": round(served / (wall1 - wall0), 1),
        "latency_ms": _percentiles([x for t in tallies for x in t["latency_ms"]]),
        "server_ms": _percentiles([x for t in tallies for x in t["server_ms"]]),
        "api_cpu_s": round(api_cpu, 2),
        "api_cpu_ms_per_request": round(1000 * api_cpu / served, 3) if served else None,
        "api_cpu_share_of_a_core": round(api_cpu / (wall1 - wall0), 2),
        "generator": {
            "processes": len(tallies),
            "cpu_share_of_a_core_each": [round(b, 2) for b in busy],
            "send_lag_ms": _percentiles([x for t in tallies for x in t["send_lag_ms"]]),
            "saturated": any(b > GENERATOR_BUSY for b in busy),
        },
        "training_steps": _steps_since(stack, job_url, step_before),
    }


def _step(stack: Stack, job_url: str | None) -> int | None:
    """The training step of the job at ``job_url`` (None: no job trains in this phase)."""
    if job_url is None:
        return None
    headers = {"Authorization": f"Bearer {stack.key}"}
    return int(httpx.get(stack.base + job_url, headers=headers).json()["progress"]["step"])


def _steps_since(stack: Stack, job_url: str | None, before: int | None) -> int | None:
    after = _step(stack, job_url)
    return None if after is None or before is None else after - before


def run_stack(stack: Stack, args: argparse.Namespace, gen: Generator) -> dict[str, Any]:
    host, port = stack.base.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.base, headers=headers, timeout=60) as client:
        ids = seed(client, args.scans)
        idle_job = f"/v1/jobs/{ids['segmentation']}"

        def plan(paths: tuple[str, ...], clients: int, seconds: float, rate: float) -> Plan:
            return Plan(host, int(port), stack.key, paths, clients, time.monotonic() + 1.0,
                        seconds, rate=rate, conditional=rate > 0)

        warm = plan((idle_job,), args.connections, 2.0, 0.0)  # compiled statements, connections
        gen.start(warm).get()
        phases = {"open_loop_idle": _phase(
            gen, stack, plan((idle_job,), args.clients, args.open_seconds, args.rate), None)}
        running = f"/v1/jobs/{start_adaptation(client, ids)}"
        phases["open_loop_training"] = _phase(
            gen, stack, plan((running,), args.clients, args.open_seconds, args.rate), running)
        phases["saturation"] = _phase(
            gen, stack, plan((running,), args.connections, args.saturation_seconds, 0.0), running)
        phases["saturation_healthz"] = _phase(
            gen, stack, plan(("/healthz",), args.connections, args.floor_seconds, 0.0), running)
        client.post(f"{running}/cancel")
    return {"setup": stack.setup, "phases": phases}


def table(stacks: dict[str, Any]) -> str:
    rows = [
        "| stack | phase | req/s | p50 ms | p95 ms | p99 ms | server p99 ms | API CPU ms/req "
        "| API CPU (cores) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in stacks.items():
        for phase, p in result["phases"].items():
            lat, srv = p["latency_ms"], p["server_ms"]
            rows.append(
                f"| {name} | {phase} | {p['requests_per_s']} | {lat['p50']} | {lat['p95']} "
                f"| {lat['p99']} | {srv['p99']} | {p['api_cpu_ms_per_request']} "
                f"| {p['api_cpu_share_of_a_core']} | {p['errors']} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--clients", type=int, default=50, help="open-loop clients")
    parser.add_argument("--rate", type=float, default=1.0, help="polls per second per client")
    parser.add_argument("--open-seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=16, help="saturation connections")
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument("--floor-seconds", type=float, default=4.0, help="/healthz saturation")
    parser.add_argument("--generator-processes", type=int, default=max(1, usable_cores() // 2))
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin DSN; a fresh database is created and dropped",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="broker (flushed)")
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--machine", default=None, help="result file suffix (default: its id)")
    args = parser.parse_args()

    from spottune.ml.machine import machine_info

    machine = machine_info()
    started = time.monotonic()
    stacks: dict[str, Any] = {}
    with Generator(args.generator_processes) as gen:
        for name in args.stacks.split(","):
            with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="spottune-load-") as tmp:
                if name == "sqlite":
                    service = start_sqlite(stack, Path(tmp))
                else:
                    service = start_postgres(stack, Path(tmp), args.postgres, args.redis)
                stacks[name] = run_stack(service, args, gen)
    result = {
        "benchmark": "load",
        "machine": machine,
        "command": "python bench/load.py " + shlex.join(sys.argv[1:]),
        "seconds": round(time.monotonic() - started),
        "generator_processes": args.generator_processes,
        "model": TINY_CONFIG,
        "scan_shape": SHAPE,
        "stacks": stacks,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{args.machine or machine['id']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{machine['cpu_model']} ({machine['cores']} cores), {result['seconds']} s\n")
    print(table(stacks))
    busy = [
        f"{s}/{p}" for s, r in stacks.items() for p, v in r["phases"].items()
        if v["generator"]["saturated"]
    ]
    if busy:
        print(f"\nwarning: the generator was busy (> {GENERATOR_BUSY:.0%} of a core) in {busy}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
