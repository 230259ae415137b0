"""The `payment-service` console script: its commands, key purge and one-line config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import free_port, hermetic_env, plain_url, run_cli

COMMANDS = (
    "serve",
    "dev",
    "migrate",
    "seed",
    "worker",
    "purge-idempotency-keys",
    "settlement",
    "reconcile",
    "sandbox",
    "api-keys",
    "outbox",
)


async def test_help_lists_every_command(tmp_path: Path) -> None:
    """`payment-service --help` names every command, api-keys included."""
    result = await run_cli("--help", env=hermetic_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


async def test_purge_deletes_only_expired_keys_and_prints_the_count(
    e2e_database: URL, e2e_engine: AsyncEngine, tmp_path: Path
) -> None:
    """`purge-idempotency-keys` deletes keys past their expiry, keeps live ones, says how many."""
    async with e2e_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, "
                "response_status, response_body, expires_at) VALUES "
                "('charge', 'default', 'e2e-old-1', 'f', 'COMPLETED', 201, '{}', "
                " now() - interval '1 hour'),"
                "('refund', 'default', 'e2e-old-2', 'f', 'COMPLETED', 200, '{}', "
                " now() - interval '1 day'),"
                "('charge', 'default', 'e2e-live', 'f', 'COMPLETED', 201, '{}', "
                " now() + interval '1 day')"
            )
        )
    env = hermetic_env(DATABASE_URL=plain_url(e2e_database), LOG_LEVEL="WARNING")
    result = await run_cli("purge-idempotency-keys", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "purged 2 expired idempotency keys"
    async with e2e_engine.connect() as connection:
        keys = (await connection.execute(text("SELECT key FROM idempotency_keys"))).scalars()
        assert list(keys) == ["e2e-live"]

    again = await run_cli("purge-idempotency-keys", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "purged 0 " in again.stdout


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (
            "serve",
            {"SERVICE_PORT": "abc", "DATABASE_URL": "postgresql://u@127.0.0.1/x"},
            "SERVICE_PORT",
        ),
        ("serve", {"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ("migrate", {"DATABASE_URL": "postgresql://postgres@127.0.0.1:{port}/x"}, "database"),
    ],
    ids=["non-numeric-port", "not-postgres", "unreachable-database"],
)
async def test_bad_configuration_is_one_error_line_and_a_nonzero_exit(
    command: str, env: dict[str, str], named: str, tmp_path: Path
) -> None:
    """Invalid settings or an unreachable database: exit != 0, one `error:` line, no traceback."""
    values = {name: value.format(port=free_port()) for name, value in env.items()}
    result = await run_cli(command, env=hermetic_env(**values), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and named in lines[0]
