"""Run Alembic from the service (CLI `migrate`, `dev`, tests) without a shell."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import URL
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from alembic.config import Config


def find_alembic_ini() -> Path:
    """alembic.ini from ALEMBIC_CONFIG, the working directory, or the source checkout."""
    candidates = []
    if env := os.environ.get("ALEMBIC_CONFIG"):
        candidates.append(Path(env))
    candidates.append(Path.cwd() / "alembic.ini")
    candidates.append(Path(__file__).resolve().parents[3] / "alembic.ini")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "alembic.ini not found: run from the project directory or set ALEMBIC_CONFIG"
    )


def alembic_config(url: URL | str | None = None) -> Config:
    config = Config(str(find_alembic_ini()))
    config.attributes["configure_logger"] = False
    if url is not None:
        config.attributes["url"] = (
            url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        )
    return config


async def _run(url: URL | str, action: Callable[[Config, str], None], revision: str) -> None:
    """Run one Alembic command on a connection of an async engine, in this event loop."""
    config = alembic_config()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:

            def _with_connection(sync_connection: object) -> None:
                config.attributes["connection"] = sync_connection
                action(config, revision)

            await connection.run_sync(_with_connection)
    finally:
        await engine.dispose()


async def upgrade(url: URL | str, revision: str = "head") -> None:
    await _run(url, command.upgrade, revision)


async def downgrade(url: URL | str, revision: str = "base") -> None:
    await _run(url, command.downgrade, revision)
