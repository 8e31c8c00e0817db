"""What a figure was measured on: one description of the machine for every benchmark result."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

GPU_TAGS = ("h200", "h100", "a100", "l4", "t4", "v100")
CPU_TAGS = ("epyc", "xeon", "ryzen", "core", "graviton", "neoverse")
CPU_FEATURES = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def machine_id(device: torch.device | None = None) -> str:
    """A short name for result files: e.g. cpu-2core-epyc-avx512; cuda-h100 when a GPU is used."""
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        return f"cuda-{next((t for t in GPU_TAGS if t in name), 'gpu')}"
    model = cpu_model().lower()
    tag = next((t for t in CPU_TAGS if t in model), re.sub(r"[^a-z0-9]+", "", model)[:12] or "cpu")
    isa = vector_isa(cpu_flags())
    return f"cpu-{os.cpu_count()}core-{tag}" + (f"-{isa}" if isa else "")


def vector_isa(flags: set[str]) -> str | None:
    """The widest vector arithmetic of a CPU, which sets its speed more than its brand does (the
    same cloud CPU model comes with AVX2 only or with AVX-512 BF16): amx, avx512, avx2 or None."""
    for isa, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    return None


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU, cores, the CPU features that change speed, torch and its threads, the GPU if any."""
    return {
        "id": machine_id(device),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_features": sorted(cpu_flags() & CPU_FEATURES),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
