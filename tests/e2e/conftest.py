"""End-to-end fixtures: the real `payment-service` console script in subprocesses, real sockets.

- `sandbox` / `peers`: the sandbox Trip and Notification services, running in this
  test process's event loop on free loopback ports (so e2e tests must never block
  the loop: use `asyncio.sleep`, async HTTP and polling, not `time.sleep`).
- `template_database`: a database migrated and seeded once per session with the
  real CLI (`payment-service migrate`, `payment-service seed --file ...`).
- `e2e_database`: a fresh database of its own per test, copied from that template.
- `start_process` / `start_service`: start `payment-service <command>` with a
  hermetic environment (no developer `.env`, no inherited settings), stdout and
  stderr captured to a file whose tail is attached to the report of a failed test;
  every process started is stopped at the end (SIGTERM, then SIGKILL after a bound).
- `service`: one `payment-service serve` per test, healthy before the test starts;
  extra environment from `@pytest.mark.service_env(NAME="value", ...)`.
- `run_smoke_script`: scripts/test_payment_api.sh (`make test-api`) against a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from payment_sandbox.runner import Sandbox
from payment_service.settings import Settings
from tests.conftest import ROOT, SEED_FILE, admin_sql

CLI = Path(sys.executable).with_name("payment-service")
STARTUP_TIMEOUT_SECONDS = 30.0
"""Bound on `serve` answering /health (interpreter start-up on a busy 2-core machine)."""
STOP_TIMEOUT_SECONDS = 15.0
"""Bound on a process exiting after SIGTERM/SIGINT before the fixture sends SIGKILL."""
CLI_TIMEOUT_SECONDS = 60.0
LOG_TAIL_LINES = 60
SMOKE_SCRIPT = ROOT / "scripts" / "test_payment_api.sh"

PROCESSES = pytest.StashKey[list["ServiceProcess"]]()

DEFAULT_SERVICE_ENV = {
    "RATE_LIMIT_ENABLED": "false",
    # Deliberately off: these tests exercise the seed API as the default client; the
    # e2e tests of authentication and limits turn both on.
    "AUTH_REQUIRED": "false",
    "LOG_LEVEL": "WARNING",
    "SERVICE_HOST": "127.0.0.1",
    "ACCESS_LOG": "false",
    "TRIP_SERVICE_TIMEOUT_SECONDS": "2",
    "OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
    "OUTBOX_BACKOFF_BASE_SECONDS": "0.05",
    "OUTBOX_BACKOFF_MAX_SECONDS": "0.5",
    "GATEWAY": "simulator",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "service_env(**env): extra environment for the `service` fixture's serve"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach the tail of every started process's output to the report."""
    report = yield
    if report.failed:
        for process in item.stash.get(PROCESSES, []):
            report.sections.append((f"{process.name} output (tail)", process.log_tail()))
    return report


# -- helpers --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hermetic_env(**extra: str) -> dict[str, str]:
    """os.environ without any of the service's settings (nor TEST_DATABASE_URL), plus `extra`."""
    settings_names = {name.upper() for name in Settings.model_fields}
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in settings_names and name != "TEST_DATABASE_URL"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def plain_url(url: URL) -> str:
    """`postgresql://...` as an operator would write DATABASE_URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = CLI_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Run `payment-service *args` to completion without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        env=dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"payment-service {' '.join(args)} did not finish in {timeout} s"
        ) from None
    assert process.returncode is not None
    return subprocess.CompletedProcess(
        [str(CLI), *args], process.returncode, stdout.decode(), stderr.decode()
    )


async def wait_until(
    condition: Callable[[], object],
    timeout: float,
    message: str,
    interval: float = 0.05,
) -> None:
    """Poll `condition` (sync or async) until truthy, failing with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout} s)")
        await asyncio.sleep(interval)


# -- processes --------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """One `payment-service <command>` subprocess, restartable with the same environment."""

    name: str
    args: Sequence[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: Any = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} has no HTTP port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Spawn the process (output appended to `log_path`)."""
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start #{self.starts}: {' '.join(self.args)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [str(CLI), *self.args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        """Wait for `GET /health` to answer 200, failing early if the process exits."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if not self.running:
                    raise AssertionError(
                        f"{self.name} exited with {self.returncode} before it was healthy:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f"{self.name} not healthy after {timeout} s:\n" + self.log_tail()
                    )
                await asyncio.sleep(0.1)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process has ended, or None if it still runs after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running or time.monotonic() >= deadline:
                return self.returncode
            await asyncio.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)

    async def stop(
        self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS
    ) -> int | None:
        """Send `signum`, wait up to `timeout`, then SIGKILL; returns the exit status."""
        if self.process is None:
            return None
        self.send_signal(signum)
        code = await self.wait_exit(timeout)
        if code is None:
            self._append(f"--- still running {timeout} s after signal {signum}: SIGKILL")
            self.kill()
            code = self.returncode
        self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL, like a crash or an OOM kill, and reap the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def restart(self, *, healthy: bool = True) -> None:
        """Start again with the same command, environment and port (after a stop or kill)."""
        if self.running:
            await self.stop()
        self.start()
        if healthy and self.port is not None:
            await self.wait_healthy()

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _append(self, line: str) -> None:
        if self._log is not None:
            self._log.write(f"{line}\n".encode())
            self._log.flush()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


StartProcess = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def start_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StartProcess]:
    """Factory: `await start_process("worker", env={...}, name="worker-1")`; all stopped after."""
    started: list[ServiceProcess] = []
    request.node.stash[PROCESSES] = started
    workdir = tmp_path / "cwd"  # no .env of the developer's; seeds are found via the checkout
    workdir.mkdir()

    async def start(
        *args: str,
        env: Mapping[str, str],
        name: str | None = None,
        port: int | None = None,
        healthy: bool = False,
    ) -> ServiceProcess:
        label = name or f"{args[0]}-{len(started) + 1}"
        handle = ServiceProcess(
            name=label,
            args=args,
            env=dict(env),
            cwd=workdir,
            log_path=tmp_path / f"{label}.log",
            port=port,
        )
        started.append(handle)
        handle.start()
        if healthy:
            await handle.wait_healthy()
        return handle

    yield start
    for handle in reversed(started):
        await handle.stop()


# -- peers and databases ----------------------------------------------------------


@pytest.fixture(scope="session")
async def template_database(
    server_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[URL]:
    """A database prepared by the real CLI: `migrate`, then `seed --file <the seed CSV>`."""
    name = f"payment_e2e_tmpl_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    url = server_url.set(database=name)
    try:
        env = hermetic_env(DATABASE_URL=plain_url(url), LOG_LEVEL="WARNING")
        cwd = tmp_path_factory.mktemp("cli")
        migrated = await run_cli("migrate", env=env, cwd=cwd)
        assert migrated.returncode == 0, migrated.stderr
        seeded = await run_cli("seed", "--file", str(SEED_FILE), env=env, cwd=cwd)
        assert seeded.returncode == 0, seeded.stderr
        assert "350 rows, 350 loaded" in seeded.stdout, seeded.stdout
        yield url
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def e2e_database(server_url: URL, template_database: URL) -> AsyncIterator[URL]:
    """A fresh migrated and seeded database of this test's own, dropped afterwards."""
    name = f"payment_e2e_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database.database}"')
    try:
        yield server_url.set(database=name)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def e2e_engine(e2e_database: URL) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database, for assertions on what the service stored."""
    engine = create_async_engine(e2e_database.set(drivername="postgresql+asyncpg"))
    yield engine
    await engine.dispose()


# -- the service ------------------------------------------------------------------


def service_env(database: URL, peers: Sandbox, port: int, **extra: str) -> dict[str, str]:
    """The environment an operator gives `serve`: DATABASE_URL, peers, port, no rate limit."""
    env = {
        **DEFAULT_SERVICE_ENV,
        "DATABASE_URL": plain_url(database),
        "TRIP_SERVICE_URL": peers.trip_url,
        "NOTIFICATION_SERVICE_URL": peers.notification_url,
        "SERVICE_PORT": str(port),
    }
    return hermetic_env(**(env | extra))


@pytest.fixture
def start_service(e2e_database: URL, peers: Sandbox, start_process: StartProcess) -> StartProcess:
    """Factory: `await start_service(IDEMPOTENCY_LEASE_SECONDS="2")` -> a healthy `serve`.

    `start_process` comes last so that it is torn down first: the processes stop
    before the peers are reset and the database is dropped.
    """

    async def start(*, name: str = "serve", **extra: str) -> ServiceProcess:
        port = free_port()
        env = service_env(e2e_database, peers, port, **extra)
        return await start_process("serve", env=env, name=name, port=port, healthy=True)

    return start


@pytest.fixture
async def service(request: pytest.FixtureRequest, start_service: StartProcess) -> ServiceProcess:
    """`payment-service serve` on a free port, healthy; extra env from `service_env` markers."""
    extra: dict[str, str] = {}
    for marker in reversed(list(request.node.iter_markers("service_env"))):
        extra.update({name: str(value) for name, value in marker.kwargs.items()})
    return await start_service(**extra)


@pytest.fixture
async def api(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the running `serve`."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=15.0) as client:
        yield client


async def run_smoke_script(service: ServiceProcess, **extra_env: str) -> str:
    """scripts/test_payment_api.sh (make test-api) with BASE_URL set: exit 0, no FAIL line."""
    env = dict(service.env, BASE_URL=service.base_url, **extra_env)
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(SMOKE_SCRIPT),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    assert process.returncode == 0, text
    assert "FAIL" not in text
    assert text.rstrip().endswith("passed, 0 failed")
    return text


# -- a PostgreSQL of the test's own -----------------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL of this test's own (initdb + pg_ctl), which it may stop and restart."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="payment-own-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.BIN / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """kill -9 of the postmaster (a crash, not a shutdown), then reap its backends."""
        pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        # Orphaned backends exit by themselves once they notice the postmaster is gone;
        # the next start waits for the shared memory they hold.

    @property
    def url(self) -> URL:
        return make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def own_postgres() -> AsyncIterator[ThrowawayPostgres]:
    if not (ThrowawayPostgres.BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    server = ThrowawayPostgres()
    await asyncio.to_thread(server.init)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.destroy)
