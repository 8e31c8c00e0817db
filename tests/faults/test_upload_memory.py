"""A 1 GiB model upload goes to storage in chunks: the API process's peak memory stays bounded.

Measured on a real uvicorn process with the kernel's record of its resident-set high-water mark
(VmHWM), so nothing in the request path can hold the file whole without the test seeing it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.faults.helpers import upload_model
from tests.faults.services import Service, api_service, free_port, start_api

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
GIB = 1024**3
BIG_CONFIG = {"width": 128, "depth": 3, "blocks_per_stage": 5}  # 162 M parameters, as F64
PEAK_BOUND = 200 * 1024**2  # what one upload may add to the API's peak (chunks, buffers)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def _write_weights(path: Path) -> tuple[int, str]:
    """A valid safetensors file for BIG_CONFIG (zeros), written without holding it in memory."""
    from spottune.ml.config import ModelConfig
    from spottune.ml.factory import build_model

    with torch.device("meta"):
        state = build_model(ModelConfig.model_validate(BIG_CONFIG)).state_dict()
    header: dict[str, object] = {}
    offset = 0
    for key, tensor in state.items():
        dtype, width = ("F64", 8) if tensor.dtype.is_floating_point else ("I64", 8)
        size = tensor.numel() * width
        header[key] = {"dtype": dtype, "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    zeros = bytes(8 * 1024**2)
    with path.open("wb") as out:
        for part in (struct.pack("<Q", len(head)), head):
            out.write(part)
            digest.update(part)
        left = offset
        while left:
            chunk = zeros[: min(left, len(zeros))]
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return path.stat().st_size, digest.hexdigest()


@pytest.fixture
def big_api(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Service, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    limits = {"SPOTTUNE_MAX_UPLOAD_BYTES": str(2 * GIB), "TMPDIR": str(tmp_path)}
    service = api_service({**env, **limits}, tmp_path / "api.log", port)
    start_api(service, base)
    yield service, base
    service.kill()


def test_a_1_gib_upload_keeps_the_api_memory_bounded(
    big_api: tuple[Service, str], clinic: str, tmp_path: Path
) -> None:
    service, base = big_api
    weights = tmp_path / "big.safetensors"
    size, sha256 = _write_weights(weights)
    assert size > GIB
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {clinic}"},
                      timeout=300) as http:
        upload_model(http)  # warm up: the first upload imports torch and builds a network
        before = _peak_rss(service.pid)
        with weights.open("rb") as handle:
            r = http.post("/v1/models", data={"config": json.dumps(BIG_CONFIG)},
                          files={"weights": ("big.safetensors", handle)})
        assert r.status_code == 201, r.text
        grew = _peak_rss(service.pid) - before
        assert r.json()["size_bytes"] == size and r.json()["sha256"] == sha256
    assert grew < PEAK_BOUND, f"the API's peak memory grew by {grew / 1024**2:.0f} MiB"
