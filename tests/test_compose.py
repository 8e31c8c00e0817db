"""docker-compose.yml: the production stack a clinic's operator starts with `docker compose up`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_every_service_of_the_design_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-gpu", "flower"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert "postgres-data" in compose["volumes"]
    assert "--appendonly" in services["redis"]["command"]


def test_api_and_workers_wait_for_the_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_gpu_worker_reserves_one_nvidia_device_and_one_job_at_a_time(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker-gpu"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    command = " ".join(worker["command"])
    assert "--queue gpu" in command and "--concurrency 1" in command


def test_services_are_configured_for_postgres_and_redis(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert env["SPOTTUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["SPOTTUNE_BROKER_URL"].startswith("redis://")
    assert env["SPOTTUNE_ENVIRONMENT"] == "production"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_parses_it() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    done = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, env={"POSTGRES_PASSWORD": "x",
                                                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
