"""Private Postgres and Redis servers and the service's own processes, for fault injection.

Each server runs on a free loopback port from a temporary directory, so stopping, killing or
wiping it never disturbs the machine's shared services.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("SPOTTUNE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(poll)


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` OS user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class PrivatePostgres:
    """A throwaway cluster (trust auth, fsync off) that tests may stop and start at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spottune-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.dir / "data"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.start()

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: like a crash (connections cut, no checkpoint)."""
        self._ctl("-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server with no persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, "redis did not start", 10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def info(self) -> dict[str, object]:
        import redis

        return dict(redis.Redis(host="127.0.0.1", port=self.port).info())

    def restart_empty(self) -> None:
        """Kill the server and start a new one that holds nothing (no RDB, no AOF)."""
        before = self.info()["run_id"]
        self.kill()
        self.start()
        after = self.info()
        # Clients (the worker) may reconnect and write within milliseconds, so emptiness is
        # checked on what the new server loaded at start, not on its key count a moment later.
        assert after["run_id"] != before, "redis was not restarted"
        assert after["rdb_last_load_keys_loaded"] == 0, "the restarted redis loaded old keys"


class Service:
    """A spottune process (API or worker) in its own process group, with a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group (the worker's pool children too), like a lost machine."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def worker_service(env: dict[str, str], log: Path) -> Service:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "spottune.worker.celery_app",
        "worker",
        "-Q",
        "gpu",
        "-c",
        "1",
        "-P",
        "prefork",
        "--loglevel",
        "INFO",
        "-n",
        f"faults-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    return Service(argv, env, log)


def start_worker(service: Service, timeout: float = 60) -> Service:
    start = len(service.log_text())
    service.start()
    wait_until(
        lambda: "ready." in service.log_text()[start:] or not service.alive(),
        "the worker did not start",
        timeout,
    )
    assert service.alive(), service.log_text()[-3000:]
    return service


def api_service(env: dict[str, str], log: Path, port: int) -> Service:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "spottune.app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
    ]
    return Service(argv, env, log)


def start_api(service: Service, base: str, timeout: float = 60) -> Service:
    service.start()

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return not service.alive()

    wait_until(up, "the API did not start", timeout)
    assert service.alive(), service.log_text()[-3000:]
    return service
