"""`spottune serve`, `spottune worker` and the operator commands `spottune admin ...`."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import uvicorn

    from spottune.core.settings import Settings

logger = logging.getLogger(__name__)

admin_app = typer.Typer(no_args_is_help=True)

WORKER_STOP_GRACE_S = 20.0  # warm shutdown (~5-10 s when idle); then cold: the job is re-queued
EMBEDDED_WORKER_NICE = 10  # the worker of `serve` yields the CPU to the API beside it


PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

KEEP_ALIVE_S = 75
"""Idle keep-alive seconds of the API's connections: longer than clients' pool expiry (httpx: 5 s,
uvicorn's default too), so a client never reuses a connection the server is closing that instant."""


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("worker")(worker)


def _alembic_ini() -> Path:
    """alembic.ini of a source checkout, else of the current directory (the Docker image)."""
    beside_package = Path(__file__).resolve().parents[2] / "alembic.ini"
    return beside_package if beside_package.is_file() else Path.cwd() / "alembic.ini"


def migrate() -> None:
    """`alembic upgrade head` on the configured database."""
    from alembic import command
    from alembic.config import Config

    ini = _alembic_ini()
    if not ini.is_file():
        raise typer.BadParameter(f"alembic.ini not found ({ini}); run from the project directory")
    config = Config(str(ini))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def worker_argv(queue: str, concurrency: int, pool: str, loglevel: str) -> list[str]:
    """Arguments of ``celery worker`` for this deployment's broker."""
    from spottune.core.settings import get_settings

    argv = ["worker", "-Q", queue, "-c", str(concurrency), "-P", pool, "--loglevel", loglevel]
    if get_settings().broker_url.startswith("filesystem://"):
        # No broadcast on the filesystem broker: skip the cluster chatter that needs it.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


def check_gpu(queue: str, require_gpu: bool) -> None:
    """Refuse to consume the gpu queue without CUDA when a GPU is required (no silent CPU runs)."""
    if not require_gpu or "gpu" not in queue.split(","):
        return
    import torch

    if not torch.cuda.is_available():
        typer.echo(
            f"no CUDA device visible (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}): refusing to run GPU jobs on the CPU. Give the "
            "container a GPU (NVIDIA Container Toolkit) and a CUDA torch build, or set "
            "SPOTTUNE_WORKER_REQUIRE_GPU=false to accept CPU training.",
            err=True,
        )
        raise typer.Exit(3)


def worker(
    queue: str = typer.Option("gpu", help="Queues to consume, comma-separated (gpu, cpu)."),
    concurrency: int = typer.Option(1, min=1, help="Jobs run at once (one per GPU)."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, solo or threads."),
    loglevel: str = typer.Option("INFO", help="Log level of the worker."),
    require_gpu: bool | None = typer.Option(
        None, "--require-gpu/--allow-cpu",
        help="Without CUDA, refuse the gpu queue (default: SPOTTUNE_WORKER_REQUIRE_GPU).",
    ),
) -> None:
    """Start a Celery worker for jobs, with the reconciler and webhook threads."""
    from spottune.core.settings import get_settings

    check_gpu(queue, get_settings().worker_require_gpu if require_gpu is None else require_gpu)
    from spottune.worker.celery_app import app as celery_app

    celery_app.worker_main(worker_argv(queue, concurrency, pool, loglevel))


def _term_when_parent_dies() -> None:
    """In the child before exec: SIGTERM it if `serve` dies without stopping it (SIGKILL, OOM)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: `serve` still stops it on every signal
        pass


def embedded_worker_env(settings: Settings, cores: int) -> dict[str, str]:
    """What the worker of `serve` runs with: it shares the machine with the API, so it trains at
    a lower priority and with a core fewer than the machine has (unless configured otherwise);
    polls then keep their latency while a job trains."""
    nice = settings.worker_nice if settings.worker_nice is not None else EMBEDDED_WORKER_NICE
    threads = settings.worker_torch_threads or max(1, cores - 1)
    return {
        "SPOTTUNE_WORKER_NICE": str(nice),
        "SPOTTUNE_WORKER_TORCH_THREADS": str(threads),
        # Native thread pools sized at import (OpenMP, MKL) follow the same cap.
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def _start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    # Its own session: Ctrl-C reaches `serve`, which then stops the worker in order.
    # One local worker takes both queues: jobs asking for the CPU run here too.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return subprocess.Popen(
        [sys.executable, "-m", "spottune.cli.main", "worker", "--queue", "gpu,cpu", "--allow-cpu"],
        env={**os.environ, **embedded_worker_env(settings, cores or 1)},
        start_new_session=True,
        preexec_fn=_term_when_parent_dies if sys.platform == "linux" else None,
    )


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # warm shutdown
    try:
        proc.wait(WORKER_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        logger.warning("worker still busy after %.0f s; stopping it", WORKER_STOP_GRACE_S)
        proc.send_signal(signal.SIGQUIT)  # cold shutdown: unacknowledged messages go back
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    with_worker: bool = typer.Option(True, "--worker/--no-worker", help="Also run a worker."),
    data_dir: Path | None = typer.Option(None, help="Data folder (default: SPOTTUNE_DATA_DIR)."),
) -> None:
    """Run the API (and a worker): SQLite + a filesystem broker unless configured otherwise."""
    import uvicorn

    if data_dir is not None:  # passed on to the worker process through its environment
        os.environ["SPOTTUNE_DATA_DIR"] = str(data_dir.resolve())
    from spottune.core.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logger.info("database %s, broker %s", settings.database_url, settings.broker_url)
    migrate()
    server = uvicorn.Server(uvicorn.Config(
        "spottune.app.main:create_app", factory=True, host=host, port=port,
        timeout_keep_alive=KEEP_ALIVE_S, loop="uvloop", http="httptools",
    ))
    previous = _stop_on_signals(server)
    proc = _start_worker(settings) if with_worker else None
    try:
        server.run()
    finally:
        if proc is not None:
            _stop_worker(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_on_signals(server: uvicorn.Server) -> dict[int, Any]:
    """SIGTERM, SIGINT and SIGHUP stop the API gracefully, then `serve` stops its worker.

    uvicorn handles SIGINT and SIGTERM itself while it runs, and afterwards raises the signal
    again with the handlers it found: with the default handler that killed `serve` before it
    reached its worker shutdown, leaving the worker training, reparented to init. These handlers
    only ask uvicorn to exit, so `serve` always reaches the `finally` that stops the worker.
    SIGHUP (a closed terminal) is not uvicorn's: it gets the same treatment here.
    """

    def stop(signum: int, _frame: object) -> None:
        logger.info("%s received: stopping the API, then the worker", signal.Signals(signum).name)
        server.should_exit = True

    return {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}


@admin_app.command("create-clinic")
def create_clinic(name: str = typer.Argument(..., help="Unique clinic name.")) -> None:
    """Create a clinic and print its API key (shown once; only a hash is stored)."""
    from spottune.app import admin

    try:
        created = admin.create_clinic(name)
    except admin.AdminError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    _print_key(f"clinic {created.name} ({created.clinic_id})", created.key)


@admin_app.command("create-key")
def create_key(name: str = typer.Argument(..., help="Name of an existing clinic.")) -> None:
    """Another API key for an existing clinic (e.g. to rotate keys); printed once."""
    from spottune.app import admin

    try:
        created = admin.create_key(name)
    except admin.AdminError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    _print_key(f"new key for clinic {created.name} ({created.clinic_id})", created.key)


def _print_key(heading: str, key: str) -> None:
    """The heading on stderr, the key alone on stdout (so scripts can capture it)."""
    typer.echo(heading, err=True)
    typer.echo("API key (shown once; only its hash is stored):", err=True)
    typer.echo(key)


@admin_app.command("revoke-key")
def revoke_key(key_or_prefix: str = typer.Argument(..., help="The key or its first 12 chars.")
               ) -> None:
    """Revoke an API key: requests with it answer 401 from now on."""
    from spottune.app import admin

    try:
        count = admin.revoke_key(key_or_prefix)
    except admin.AdminError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    typer.echo(f"revoked {count} key(s)")


@admin_app.command("purge-clinic")
def purge_clinic(
    name: str = typer.Argument(..., help="The clinic to remove."),
    yes: bool = typer.Option(False, "--yes", help="Confirm: this cannot be undone."),
) -> None:
    """Remove a clinic and ALL its data: keys, scans, models, jobs and every artefact."""
    from spottune.app import admin

    if not yes:
        typer.echo(f"this deletes clinic {name!r} and all its data; add --yes to confirm", err=True)
        raise typer.Exit(2)
    try:
        counts = admin.purge_clinic(name)
    except admin.AdminError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    typer.echo(f"purged clinic {name}: " + ", ".join(f"{n} {t}" for t, n in counts.items() if n))
    typer.echo("deleted rows may linger in database files and backups: see docs/data-retention.md",
               err=True)
