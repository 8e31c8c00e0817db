"""Run the Alembic migrations programmatically (``spottune serve`` prestart, tests, compose)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from spottune.core.settings import Settings, get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that works from any working directory."""
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_head(settings: Settings | None = None, url: str | None = None) -> None:
    """``alembic upgrade head`` on ``url`` (default: the settings' database URL)."""
    command.upgrade(alembic_config(url or (settings or get_settings()).database_url), "head")
