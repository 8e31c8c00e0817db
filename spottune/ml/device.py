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
