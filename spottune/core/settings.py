"""Service settings: one typed class, read from the environment once (prefix ``SPOTTUNE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024**2
GIB = 1024**3
_DEFAULT_PASSWORDS = ("changethis", "password", "secret")


def _default_data_dir() -> Path:
    return Path(user_data_dir("spottune", appauthor=False))


class Settings(BaseSettings):
    """Everything the API and the workers need; nothing else reads ``os.environ``."""

    model_config = SettingsConfigDict(env_prefix="SPOTTUNE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""  # empty -> sqlite:///{data_dir}/spottune.db
    broker_url: str = "filesystem://"
    max_upload_bytes: int = Field(default=512 * MIB, gt=0)
    max_voxels: int = Field(default=512**3, gt=0)
    clinic_max_concurrent_jobs: int = Field(default=4, ge=1)
    clinic_max_stored_bytes: int = Field(default=20 * GIB, gt=0)
    # Requests per API key (0: no limit); several API processes each allow this rate.
    rate_limit_per_minute: int = Field(default=6000, ge=0)
    rate_limit_burst: int = Field(default=600, ge=1)
    job_retry_after_s: int = Field(default=30, ge=1)  # Retry-After of a 429 at the job limit
    readiness_cache_s: float = Field(default=2.0, ge=0)  # /readyz answers from a recent check
    job_max_attempts: int = Field(default=3, ge=1)
    heartbeat_timeout_s: float = Field(default=120.0, gt=0)
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    visibility_timeout_s: int = Field(default=6 * 3600, gt=0)
    broker_send_timeout_s: float = Field(default=2.0, gt=0)
    db_pool_size: int = Field(default=40, ge=1)  # kept open: covers the API thread pool (40)
    db_max_overflow: int = Field(default=10, ge=0)  # opened (and closed) beyond that
    # Threads of the API that read job statuses for polls, each keeping one connection open.
    status_read_threads: int = Field(default=4, ge=1)
    # The worker's share of the CPU: its niceness (higher yields to the API) and torch's threads
    # (None: torch's default, one per core). `spottune serve` runs its worker at nice 10 with one
    # thread fewer than the cores, so that the API keeps a core while a job trains.
    worker_nice: int | None = Field(default=None, ge=0, le=19)
    worker_torch_threads: int | None = Field(default=None, ge=1)
    # A worker consuming the gpu queue refuses to start on a machine without CUDA when set
    # (docker-compose sets it for worker-gpu): no silent hours-long training on a CPU.
    worker_require_gpu: bool = False
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_s: float = Field(default=5.0, gt=0)  # doubles per attempt, capped at 1 h
    # None: allowed in development (a receiver on localhost), refused in production (SSRF).
    webhook_allow_private_networks: bool | None = None

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'spottune.db'}"
        if self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        if self.environment == "production":
            if self.is_sqlite:
                raise ValueError(
                    "production refuses the SQLite default: set SPOTTUNE_DATABASE_URL to Postgres"
                )
            if self.broker_url.startswith("filesystem://"):
                raise ValueError(
                    "production refuses the filesystem broker: set SPOTTUNE_BROKER_URL to Redis"
                )
            if any(f":{p}@" in self.database_url for p in _DEFAULT_PASSWORDS):
                raise ValueError("production refuses a default database password: change it")
        return self

    @property
    def webhooks_may_reach_private_networks(self) -> bool:
        if self.webhook_allow_private_networks is not None:
            return self.webhook_allow_private_networks
        return self.environment == "development"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded ``filesystem://`` broker (API and workers must share it)."""
        return self.data_dir / "broker"

    def broker_transport_options(self) -> dict[str, Any]:
        """Kombu transport options shared by the API client and the workers."""
        if self.broker_url.startswith("filesystem://"):
            # Producers write data_folder_out, consumers read data_folder_in: one folder.
            queue_dir = self.broker_dir / "out"
            processed = self.broker_dir / "processed"
            for folder in (self.broker_dir / "in", queue_dir, processed):
                folder.mkdir(parents=True, exist_ok=True)
            return {
                "data_folder_in": str(queue_dir),
                "data_folder_out": str(queue_dir),
                "data_folder_processed": str(processed),
                "store_processed": False,
            }
        return {
            "visibility_timeout": self.visibility_timeout_s,
            "socket_connect_timeout": self.broker_send_timeout_s,
            "socket_timeout": max(self.broker_send_timeout_s, 5.0),
        }


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return Settings()
