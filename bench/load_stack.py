"""The service stack of the load benchmark: a fresh database, the API and a worker as real
processes, and the seed data (a tiny model, scans, masks, a training adaptation)."""

from __future__ import annotations

import gzip
import json
import os
import platform
import secrets
import socket
import subprocess
import time
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
