"""The Makefile's deploy targets: listed by help, clear without Docker, and a real
pg_dump/pg_restore round trip through a stand-in for `docker compose exec db`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.deploy.deploy_support import ROOT, find_tool, in_ci

SEED_TARGETS = [
    "setup",
    "build",
    "up",
    "down",
    "restart",
    "logs",
    "shell",
    "db-shell",
    "db-backup",
    "db-restore",
    "health",
    "test",
    "test-api",
    "k8s-deploy",
    "k8s-delete",
    "clean",
]
OTHER_TARGETS = ["help", "run", "bench", "venv", "test-fast", "lint", "format", "ci-tools"]
DOCKER_TARGETS = [
    "build",
    "up",
    "down",
    "restart",
    "logs",
    "shell",
    "db-shell",
    "db-backup",
    "db-restore",
]

FAKE_DOCKER = """\
#!/bin/bash
# Stand-in for the docker CLI: `compose exec db CMD` runs CMD here, against the test
# database named by the POSTGRES_*/PG* variables the test exports.
case "$1" in
  info) exit "${FAKE_DOCKER_INFO_EXIT:-0}" ;;
  compose)
    shift
    case "$1" in
      version) [ -z "$FAKE_DOCKER_NO_COMPOSE" ] || exit 1; echo "Docker Compose v2"; exit 0 ;;
      stop|start) echo "$*" >> "$FAKE_DOCKER_LOG"; exit 0 ;;
      exec)
        shift; [ "$1" = "-T" ] && shift
        [ "$1" = db ] || { echo "fake docker: no service $1" >&2; exit 2; }
        shift; exec "$@" ;;
    esac ;;
esac
echo "fake docker: unsupported: $*" >&2
exit 2
"""


def make(
    *args: str, env: dict[str, str] | None = None, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run make in the repository with a clean make environment."""
    environment = {
        k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    }
    environment.update(env or {})
    if path is not None:
        environment["PATH"] = path
    binary = shutil.which("make") or "/usr/bin/make"
    return subprocess.run(
        [binary, "--no-print-directory", *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def tools_only_path(tmp_path: Path, *extra: tuple[str, str]) -> str:
    """A PATH with the few tools the Makefile uses, and no docker unless given."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in ("sed", "head", "ls", "python3", "mkdir", "date", "rm", "mv"):
        if found := shutil.which(tool):
            (folder / tool).symlink_to(found)
    for name, script in extra:
        (folder / name).write_text(script)
        (folder / name).chmod(0o755)
    return str(folder)


def test_help_lists_every_target_with_a_description() -> None:
    """`make help` shows the seed's targets plus run, bench, help and the rest."""
    listed = make("help")
    assert listed.returncode == 0, listed.stderr
    names = {
        re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0]
        for line in listed.stdout.splitlines()
        if line.strip()
    }
    assert set(SEED_TARGETS + OTHER_TARGETS) <= names


@pytest.mark.parametrize("target", DOCKER_TARGETS)
def test_docker_targets_say_docker_is_missing(target: str, tmp_path: Path) -> None:
    """Without docker on PATH a compose target stops with one clear line, running nothing."""
    result = make(target, path=tools_only_path(tmp_path))
    assert result.returncode != 0
    first = result.stderr.splitlines()[0]
    assert first == f"error: docker not found: install Docker (Engine or Desktop) to use '{target}'"
    assert result.stdout == ""


def test_docker_without_compose_plugin_is_named(tmp_path: Path) -> None:
    """A docker CLI without the compose plugin (this machine's case) is reported as such."""
    path = tools_only_path(tmp_path, ("docker", FAKE_DOCKER))
    result = make("up", env={"FAKE_DOCKER_NO_COMPOSE": "1"}, path=path)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith("error: 'docker compose' not available")


def test_docker_without_daemon_is_named(tmp_path: Path) -> None:
    """A docker CLI whose daemon is down is reported before compose is run."""
    path = tools_only_path(tmp_path, ("docker", FAKE_DOCKER))
    result = make("logs", env={"FAKE_DOCKER_INFO_EXIT": "1"}, path=path)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith("error: the Docker daemon is not reachable")


def test_kubectl_targets_say_kubectl_is_missing(tmp_path: Path) -> None:
    """Without kubectl, k8s-deploy stops with one line naming the way to install it."""
    result = make("k8s-deploy", "VENV=/nonexistent", path=tools_only_path(tmp_path))
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith("error: kubectl not found")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("test-api", "bash scripts/test_payment_api.sh"),
        ("bench", ".venv/bin/python -m bench"),
        ("k8s-deploy", "apply -k k8s/overlays/minikube"),
        ("db-backup", "pg_dump"),
        ("db-restore BACKUP=backups/x.dump", "pg_restore"),
        ("health", "HEALTH_PY"),
    ],
)
def test_targets_run_the_documented_commands(target: str, expected: str) -> None:
    """A dry run (make -n) shows each target's command: scripts, bench, kubectl, pg_*."""
    result = make("-n", *target.split())
    assert expected in result.stdout, result.stdout + result.stderr


def test_run_passes_the_sandbox_ports_to_dev() -> None:
    """`make run TRIP_PORT=... NOTIFICATION_PORT=... CONTROL_PORT=...` hands them to
    `payment-service dev`, whose defaults (8081/8084/8085) stay the Makefile's."""
    ports = ("PORT=9182", "TRIP_PORT=9181", "NOTIFICATION_PORT=9184", "CONTROL_PORT=9185")
    command = " ".join(make("-n", "run", *ports).stdout.replace("\\\n", " ").split())
    assert "payment-service dev --port 9182 --trip-port 9181" in command, command
    assert "--notification-port 9184 --control-port 9185" in command, command
    defaults = " ".join(make("-n", "run").stdout.replace("\\\n", " ").split())
    assert "--trip-port 8081 --notification-port 8084 --control-port 8085" in defaults


# --- backup and restore, for real ------------------------------------------------


@pytest.fixture
async def backup_database(database_url: str) -> AsyncIterator[URL]:
    """A small database of its own holding three rows."""
    url = make_url(database_url)
    name = f"payment_backup_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    target = url.set(database=name)
    engine = create_async_engine(target)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE ledger (id int PRIMARY KEY, note text)"))
        await connection.execute(text("INSERT INTO ledger VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    await engine.dispose()
    try:
        yield target
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def ledger_rows(url: URL) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text("SELECT count(*) FROM ledger"))).scalar_one()
    finally:
        await engine.dispose()


async def server_major(url: URL) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version_num"))).scalar_one()
    finally:
        await engine.dispose()
    return int(version) // 10000


async def test_db_backup_then_db_restore_round_trip(backup_database: URL, tmp_path: Path) -> None:
    """db-backup writes a pg_dump archive to backups/; db-restore brings the rows back,
    with the API stopped meanwhile."""
    if not backup_database.host:
        pytest.skip("needs a TCP PostgreSQL (TEST_DATABASE_URL), not a unix socket")
    pg_dump = find_tool("pg_dump", "apt-get install postgresql-client")
    version = await asyncio.to_thread(
        subprocess.run, [pg_dump, "--version"], capture_output=True, text=True, check=True
    )
    found = re.search(r"\(PostgreSQL\) (\d+)", version.stdout)
    assert found, version.stdout
    client_major = int(found[1])
    if client_major < await server_major(backup_database):
        message = f"pg_dump {client_major} cannot dump a newer server"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)

    fake = tools_only_path(tmp_path, ("docker", FAKE_DOCKER))
    log = tmp_path / "docker.log"
    env = {
        "FAKE_DOCKER_LOG": str(log),
        "POSTGRES_USER": backup_database.username or "postgres",
        "POSTGRES_DB": backup_database.database or "",
        "PGHOST": backup_database.host,
        "PGPORT": str(backup_database.port or 5432),
        "PGPASSWORD": backup_database.password or "",
    }
    path = f"{fake}:{os.environ['PATH']}"
    backups = tmp_path / "backups"

    made = await asyncio.to_thread(make, "db-backup", f"BACKUP_DIR={backups}", env=env, path=path)
    assert made.returncode == 0, made.stdout + made.stderr
    (dump,) = backups.glob("payment_db-*.dump")
    assert dump.read_bytes().startswith(b"PGDMP"), "not a pg_dump custom-format archive"

    engine = create_async_engine(backup_database)
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM ledger WHERE id > 1"))
    await engine.dispose()
    assert await ledger_rows(backup_database) == 1

    restored = await asyncio.to_thread(
        make, "db-restore", f"BACKUP_DIR={backups}", env=env, path=path
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert await ledger_rows(backup_database) == 3
    assert log.read_text().splitlines() == ["stop api", "start api"]
