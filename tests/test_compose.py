"""docker-compose.yml: the production stack a clinic's operator starts with `docker compose up`.

The checks run on the resolved configuration: `docker compose config` where the compose plugin
exists, else the YAML with the compose file format's variable interpolation done here, so the
checks always run on what compose would run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spottune.core.broker import Queue

ROOT = Path(__file__).resolve().parents[1]
ENV = {"POSTGRES_PASSWORD": "s3cret", "PATH": "/usr/bin:/bin"}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
    ``${VAR?err}`` and ``$$`` in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return env.get(match.group("bare"), "")
        spec = match.group("braced")
        name, op, arg = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)", spec).groups()  # type: ignore[union-attr]
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return current or ""

    return _VARIABLE.sub(one, value)


def _docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def resolved(env: dict[str, str]) -> dict[str, Any]:
    if _docker_compose():
        done = subprocess.run(["docker", "compose", "--profile", "cpu", "--profile", "monitoring",
                               "config", "--format", "json"], cwd=ROOT, capture_output=True,
                              text=True, env=env)
        if done.returncode != 0:
            raise MissingVariable(done.stderr)
        return dict(json.loads(done.stdout))
    return dict(interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved(ENV)


def _command(service: dict[str, Any]) -> str:
    return " ".join(service["command"])


def test_every_service_of_the_design_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "caddy", "worker-gpu", "worker-cpu",
            "flower"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert {"postgres-data", "caddy-data"} <= set(compose["volumes"])
    assert "--appendonly" in services["redis"]["command"]


def test_api_and_workers_wait_for_the_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker-gpu", "worker-cpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_gpu_worker_gets_a_cuda_torch_a_device_and_refuses_the_cpu(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker-gpu"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "--queue gpu" in _command(worker) and "--concurrency 1" in _command(worker)
    assert worker["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert worker["environment"]["SPOTTUNE_WORKER_REQUIRE_GPU"] == "true"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cu\d+$", dockerfile, re.M)
    assert "whl/${TORCH_VARIANT}" in dockerfile


def test_cpu_worker_has_its_own_queue_and_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = _command(services["worker-cpu"])
    assert f"--queue {Queue.CPU.value}" in command and Queue.GPU.value not in command
    assert f"--queue {Queue.GPU.value}" in _command(services["worker-gpu"])
    assert services["worker-cpu"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert "deploy" not in services["worker-cpu"]
    assert services["worker-cpu"]["image"] != services["worker-gpu"]["image"]


def test_the_api_is_reached_only_through_tls(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "ports" not in services["api"]
    caddy = services["caddy"]
    published = {str(p.get("target") if isinstance(p, dict) else p) for p in caddy["ports"]}
    assert any("443" in p for p in published)
    mounts = [str(v.get("source") if isinstance(v, dict) else v) for v in caddy["volumes"]]
    assert any("Caddyfile" in m for m in mounts)
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "reverse_proxy api:8000" in caddyfile and "{$SPOTTUNE_DOMAIN" in caddyfile
    assert "--proxy-headers" in _command(services["api"])


def test_flower_needs_a_login_and_controls_nothing(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    for port in flower["ports"]:
        assert (port.get("host_ip") if isinstance(port, dict) else port).startswith("127.0.0.1")
    command = flower["command"][-1]
    for flag in ("--read_only=True", "--persistent=False", "--enable_events=False"):
        assert flag in command
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    # Without a login it refuses to start (the guard runs before celery is ever started).
    guard = subprocess.run(flower["command"], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": ""}, timeout=10)
    assert guard.returncode == 1 and "FLOWER_BASIC_AUTH" in guard.stderr


def test_services_are_configured_for_postgres_and_redis(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert env["SPOTTUNE_DATABASE_URL"] == (
        "postgresql+psycopg://spottune:s3cret@postgres:5432/spottune"
    )
    assert env["SPOTTUNE_BROKER_URL"].startswith("redis://")
    assert env["SPOTTUNE_ENVIRONMENT"] == "production"


def test_a_missing_password_stops_the_configuration() -> None:
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        resolved({"PATH": "/usr/bin:/bin"})


def test_every_variable_is_documented_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = {m.group("braced").split(":")[0].split("-")[0].split("?")[0]
            for m in _VARIABLE.finditer(text) if m.group("braced")}
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used and used <= documented, used - documented
