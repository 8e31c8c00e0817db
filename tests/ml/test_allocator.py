"""keep_freed_memory: a large tensor allocated again reuses memory instead of faulting it in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

PROBE = """
import resource, sys, torch
from spottune.ml.device import keep_freed_memory
assert keep_freed_memory(sys.argv[1] == "keep")
x, w = torch.rand(8, 16, 256, 256), torch.rand(16, 16, 3, 3)  # activations of 32 MiB each
counts = []
for step in range(4):  # the same layer again and again, as in training
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.relu(torch.nn.functional.conv2d(x, w, padding=1)) * 2
    del y
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(counts[1:]))  # after the first step; the best step, as a page now and then is no signal
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_large_tensors_are_not_faulted_in_again_when_memory_is_kept() -> None:
    pages = 32 * 1024 * 1024 // 4096  # one activation
    assert faults("default") > pages  # glibc unmapped the activations: every page faulted again
    assert faults("keep") < pages // 10  # the freed blocks were reused
