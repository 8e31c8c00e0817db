"""`spottune worker` on the gpu queue refuses a machine without CUDA when a GPU is required."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from spottune.cli.main import app
from spottune.core.settings import get_settings


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_worker_refuses_to_train_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTTUNE_WORKER_REQUIRE_GPU", "true")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker", "--queue", "gpu"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 3
    assert "no CUDA device" in result.output
    assert "SPOTTUNE_WORKER_REQUIRE_GPU=false" in result.output
    explicit = CliRunner().invoke(app, ["worker", "--queue", "cpu,gpu", "--require-gpu"])
    assert explicit.exit_code == 3
