"""Run Alembic from the service (CLI `migrate`, `dev`, tests) without a shell.

The migration scripts live next to this file: new ones go in
src/payment_service/migrations/versions/ (`alembic revision -m ...` from the checkout
writes them there, through the top-level alembic.ini)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import URL
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent
"""env.py, script.py.mako and versions/ (where new migrations go), shipped in the wheel."""


def alembic_config(url: URL | str | None = None) -> Config:
    """Alembic's Config for the migrations in this package: no alembic.ini needed, so
    an installed wheel migrates from any directory. ALEMBIC_CONFIG names an ini file to
    use instead (the checkout's alembic.ini points at the same folder)."""
    if ini := os.environ.get("ALEMBIC_CONFIG"):
        config = Config(ini)
    else:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("path_separator", "os")
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
