"""`make demo`: the whole service on one machine, end to end, in a few minutes on a laptop CPU.

1. starts `spottune serve` (SQLite + filesystem broker + a real worker) on a free port, in a fresh
   data folder;
2. creates a clinic (`spottune admin create-clinic`), prepares the quick benchmark if missing
   (`spottune data prepare --quick`: real heads, 3 mm voxels);
3. pretrains a source model on site A through the API, uploads the scans of site B, adapts with
   SpotTUnet from a few annotated slices of ONE site-B scan, following the job's progress;
4. downloads the masks and the report, prints Dice before and after adaptation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from spottune.data.manifest import Manifest, ManifestScan, read_manifest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_SITE, TARGET_SITE = "siemens15", "philips3"  # T1 -> T2-like: a large domain shift
SPACING_MM = 3.0  # the quick benchmark's voxels
PRETRAIN = {"width": 8, "depth": 3, "blocks_per_stage": 1, "spacing_mm": [SPACING_MM] * 2,
            "patch_size": 64, "iterations": 300, "batch_size": 16, "learning_rate": 0.01}
# No learning rates: the service derives them from the iteration budget (0.05 for 150 iterations,
# the policy's 10x that), as it does for any clinic that leaves them out.
ADAPT = {"iterations": 150, "batch_size": 16}
ANNOTATED_SLICES = 5  # axial slices of one target-site scan the clinic annotated


def spottune(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "spottune.cli.main", *args], env=env, cwd=ROOT,
                          check=True, capture_output=True, text=True)
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_data(data: Path, env: dict[str, str]) -> Manifest:
    manifest = data / "manifest.json"
    if not manifest.is_file():
        print(f"preparing the quick benchmark in {data} (real heads, 3 mm) ...", flush=True)
        args = ["data", "prepare", "--quick", "--out", str(data),
                "--sites", f"{SOURCE_SITE},{TARGET_SITE}"]
        try:
            spottune(*args, env=env)
        except subprocess.CalledProcessError as error:  # e.g. no registry access: phantoms
            print(f"  real heads unavailable ({error.stderr.strip()[-200:]}); using phantoms")
            spottune(*args, "--source", "synthetic", env=env)
    return read_manifest(manifest)


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spottune.cli.main", "serve", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"the server did not start; see {log}")


def upload(client: httpx.Client, manifest: Manifest, scan: ManifestScan,
           annotated: list[int] | None = None) -> str:
    image, mask = manifest.image_path(scan), manifest.mask_path(scan)
    files = {"image": (image.name, image.read_bytes()), "mask": (mask.name, mask.read_bytes())}
    form = {"site": scan.site, "subject": scan.subject}
    if annotated is not None:
        form["annotated_slices"] = json.dumps(annotated)
    response = client.post("/v1/scans", files=files, data=form)
    response.raise_for_status()
    return str(response.json()["id"])


def annotated_slices(manifest: Manifest, scan: ManifestScan, count: int) -> list[int]:
    """`count` axial slices spread over the brain (as a clinic would pick them to annotate)."""
    import numpy as np

    from spottune.ml.config import Preprocessing
    from spottune.ml.preparation import slice_voxel_axis
    from spottune.ml.volumes import load_mask, load_volume

    image = load_volume(manifest.image_path(scan))
    mask = load_mask(manifest.mask_path(scan), image)
    axis = slice_voxel_axis(image, Preprocessing())  # the voxel axis of axial slices
    area = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    brain = np.flatnonzero(area > 0.2 * area.max())
    return [int(i) for i in np.linspace(brain[0], brain[-1], count + 2)[1:-1].round()]


def follow(client: httpx.Client, job_id: str, what: str) -> dict[str, Any]:
    started, shown = time.monotonic(), 0.0
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            break
        if time.monotonic() - shown > 10:
            p = job["progress"]
            loss = f" loss {p['loss']:.3f}" if p["loss"] is not None else ""
            eta = f" eta {p['eta_seconds']:.0f} s" if p["eta_seconds"] is not None else ""
            print(f"  {what}: {job['status']} step {p['step']}/{p['total']}{loss}{eta}", flush=True)
            shown = time.monotonic()
        time.sleep(0.5)
    print(f"  {what}: {job['status']} in {time.monotonic() - started:.0f} s", flush=True)
    if job["status"] != "succeeded":
        sys.exit(f"{what} {job['status']}: {job['error']}")
    return dict(job)


def run_demo(client: httpx.Client, manifest: Manifest, out: Path) -> None:
    source, target = manifest.scans_of(SOURCE_SITE), manifest.scans_of(TARGET_SITE)
    print(f"uploading {len(source)} {SOURCE_SITE} scans and {len(target)} {TARGET_SITE} scans",
          flush=True)
    source_ids = [upload(client, manifest, s) for s in source]
    picked = annotated_slices(manifest, target[0], ANNOTATED_SLICES)
    train_id = upload(client, manifest, target[0], annotated=picked)
    target_ids = [upload(client, manifest, s) for s in target[1:]]

    print(f"pretraining a source model on {SOURCE_SITE} ...", flush=True)
    job = client.post("/v1/pretrainings", json={"train_scan_ids": source_ids, "options": PRETRAIN})
    job.raise_for_status()
    model_id = follow(client, job.json()["id"], "pretraining")["result"]["model_id"]

    print(f"adapting to {TARGET_SITE} with SpotTUnet from {ANNOTATED_SLICES} annotated slices "
          f"{picked} of one scan ...", flush=True)
    job = client.post("/v1/adaptations", json={
        "model_id": model_id, "train_scan_ids": [train_id], "target_scan_ids": target_ids,
        "method": "spottune", "options": ADAPT})
    job.raise_for_status()
    done = follow(client, job.json()["id"], "adaptation")

    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(target_ids, (s.id for s in target[1:]), strict=True))
    for mask in client.get(f"/v1/jobs/{done['id']}/masks").json()["items"]:
        data_bytes = client.get(f"/v1/masks/{mask['id']}").content
        (out / f"{names[mask['scan_id']]}_mask.nii.gz").write_bytes(data_bytes)
    report = out / "report.html"
    report.write_bytes(client.get(f"/v1/jobs/{done['id']}/report").content)
    mean = done["result"]["metrics"]["mean"]
    print(f"\nDice on {len(target_ids)} {TARGET_SITE} scans (mean): "
          f"before {mean['before']['dice']:.3f} -> after {mean['after']['dice']:.3f}")
    print(f"surface Dice: before {mean['before']['sdice']:.3f} -> "
          f"after {mean['after']['sdice']:.3f}")
    print(f"report: {report}\nmasks:  {out}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo",
                        help="quick benchmark folder (prepared if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "demo",
                        help="where the masks and the report go")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spottune-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTTUNE_")}
        env["SPOTTUNE_DATA_DIR"] = tmp
        # One math thread: on a small shared CPU, oversubscribed threads are many times slower.
        env.setdefault("OMP_NUM_THREADS", "1")
        manifest = ensure_data(args.data, env)
        port = free_port()
        print(f"starting `spottune serve` on port {port} (SQLite + filesystem broker in {tmp})")
        args.out.mkdir(parents=True, exist_ok=True)
        server = start_server(port, env, args.out / "serve.log")
        try:
            key = spottune("admin", "create-clinic", "demo-clinic", env=env).strip()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as client:
                run_demo(client, manifest, args.out)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
    print(f"demo finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
