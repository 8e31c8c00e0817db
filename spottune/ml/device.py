"""Device choice and seeding."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(preference: str | None = None) -> torch.device:
    """`preference` ("cpu", "cuda", "cuda:1", None/"auto") -> a usable device.

    None or "auto" picks CUDA when available, else CPU. Asking for CUDA where there is none raises
    ValueError rather than silently training on the CPU for hours.
    """
    if preference in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; make CPU kernels deterministic.

    Deterministic algorithms are requested in warn-only mode so that CUDA ops without a
    deterministic implementation still run (their results may then vary slightly).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed heap before trimming
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _mallopt(param: int, value: int) -> bool:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(param, value))  # the C library this process runs on


def keep_freed_memory(enabled: bool = True) -> bool:
    """Stop glibc from handing every large tensor's pages back to the kernel (Linux/glibc only).

    By default glibc serves allocations over 32 MiB with a fresh mmap and unmaps them on free, so
    every activation of a 256x256 batch is page-faulted and zeroed again at every step: on a 2-core
    CPU that doubled the cost of a training step (bench/speed.py, "allocator"). With this on, large
    blocks come from the heap and freed memory is reused; the process keeps its peak footprint.
    `enabled=False` restores glibc's defaults. Returns whether the setting was applied.
    """
    if enabled:
        applied = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    else:
        applied = _mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX) and _mallopt(
            _M_TRIM_THRESHOLD, _DEFAULT_TRIM
        )
    if applied:
        log.debug("large allocations %s", "kept on the heap" if enabled else "mmapped (default)")
    return applied
