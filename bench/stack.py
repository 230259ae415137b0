"""What a bench run stands on: PostgreSQL, a fresh database, the sandbox Trip service, the API.

Everything is started here and stopped again, whatever happens:
- PostgreSQL: the server at BENCH_DATABASE_URL (a database of our own is created there
  and dropped after), else `payment_service.embedded.EmbeddedPostgres` in a temp dir;
- the database is migrated and seeded with the real CLI (`payment-service migrate`,
  `payment-service seed`);
- `payment-service sandbox` and `payment-service serve --workers N` run as subprocesses on
  free loopback ports, in the temp dir (so no developer `.env` is read), with their output
  kept in log files whose tail is shown when something fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "seeds" / "rhfd_payments.csv"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
CLI_TIMEOUT_SECONDS = 180.0


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and why (one line or a log tail)."""


def cli_path() -> str:
    """The `payment-service` console script of the interpreter running the bench."""
    beside = Path(sys.executable).with_name("payment-service")
    if beside.exists():
        return str(beside)
    found = shutil.which("payment-service")
    if found is None:
        raise BenchError("payment-service is not installed: run `make venv` first")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def asyncpg_dsn(url: URL) -> str:
    """A libpq-style DSN asyncpg accepts (socket URIs keep their `?host=`)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def libpq_env(url: URL) -> dict[str, str]:
    """PG* variables for pgbench/psql pointing at `url`."""
    host = url.host or (url.query.get("host") if url.query else None) or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    env = {
        "PGHOST": str(host),
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        "PGDATABASE": url.database or "postgres",
    }
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


# -- PostgreSQL ---------------------------------------------------------------------------


@dataclass
class Postgres:
    """The server: its admin URL, and (embedded only) the server log we may read."""

    admin_url: URL
    embedded: bool
    log_file: Path | None = None
    version: str = ""

    def postmaster_pids(self) -> list[int]:
        """The embedded server's postmaster (its backends are its children); [] otherwise."""
        if self.log_file is None:
            return []
        try:
            return [int((self.log_file.parent / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[Postgres]:
    """BENCH_DATABASE_URL's server, else an embedded one in `workdir` (stopped on exit)."""
    configured = os.environ.get("BENCH_DATABASE_URL")
    if configured:
        url = make_url(configured).set(drivername="postgresql+asyncpg")
        server = Postgres(admin_url=url, embedded=False)
        server.version = asyncio.run(_server_version(url))
        yield server
        return
    from payment_service.embedded import EmbeddedPostgres, EmbeddedPostgresError

    data_dir = workdir / "pg" / "data"
    embedded = EmbeddedPostgres(data_dir)
    try:
        url = make_url(embedded.start())
    except EmbeddedPostgresError as exc:
        raise BenchError(str(exc)) from None
    try:
        server = Postgres(admin_url=url, embedded=True, log_file=data_dir / "log")
        server.version = asyncio.run(_server_version(url))
        yield server
    finally:
        embedded.stop()


async def _server_version(url: URL) -> str:
    import asyncpg

    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except Exception as exc:
        raise BenchError(f"cannot reach PostgreSQL at {url.render_as_string()}: {exc}") from None
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


async def admin_execute(url: URL, *statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def fetch(url: URL, query: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        return [tuple(row) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_database(server: Postgres, name: str, *, keep: bool = False) -> Iterator[URL]:
    """CREATE DATABASE `name`; yield its URL; DROP it after (unless `keep`)."""
    asyncio.run(admin_execute(server.admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield server.admin_url.set(database=name)
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                asyncio.run(
                    admin_execute(
                        server.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                    )
                )


# -- subprocesses -------------------------------------------------------------------------


@dataclass
class Process:
    """A started `payment-service` subprocess with its output in `log_path`."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL the group after a bound."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None


def start_process(
    name: str, args: list[str], *, env: Mapping[str, str], cwd: Path, logdir: Path
) -> Process:
    log_path = logdir / f"{name}.log"
    log = log_path.open("ab")
    popen = subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl+C reaches the bench only; it stops these itself
    )
    return Process(name, popen, log_path, log)


def run_cli(args: list[str], *, env: Mapping[str, str], cwd: Path) -> str:
    """Run one `payment-service` command to completion; its output, or BenchError."""
    try:
        result = subprocess.run(
            [cli_path(), *args],
            cwd=cwd,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"payment-service {args[0]} did not finish in {CLI_TIMEOUT_SECONDS}s"
        ) from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-20:]
        raise BenchError(f"payment-service {' '.join(args)} failed:\n" + "\n".join(output))
    return result.stdout.strip()


def wait_http(url: str, process: Process, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    """Poll `url` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(
                f"{process.name} exited with {process.popen.returncode} while starting:\n"
                + process.tail()
            )
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise BenchError(
        f"{process.name} not ready at {url} after {timeout:.0f}s ({last}):\n" + process.tail()
    )


# -- the service under test ---------------------------------------------------------------


@dataclass
class Service:
    """The running API (and its sandbox Trip/Notification/processor peers; none for the
    bare reference app)."""

    base_url: str
    api: Process
    sandbox: Process | None
    workers: int
    env: dict[str, str]

    def worker_pids(self) -> list[int]:
        """PIDs of the uvicorn worker processes (the main process itself when workers=1)."""
        import psutil

        try:
            main = psutil.Process(self.api.pid)
            children = main.children(recursive=False)
        except psutil.Error:
            return []
        workers = []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in cmdline or "multiprocessing-fork" in cmdline:
                workers.append(child.pid)
        return workers or [self.api.pid]


def service_env(
    database_url: URL, trip_url: str, notification_url: str, port: int
) -> dict[str, str]:
    """Production settings with what a load test must switch off (access log, rate limit,
    API keys: its clients send none)."""
    return {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "TRIP_SERVICE_URL": trip_url,
        "NOTIFICATION_SERVICE_URL": notification_url,
        "SERVICE_HOST": "127.0.0.1",
        "SERVICE_PORT": str(port),
        "ACCESS_LOG": "false",
        "RATE_LIMIT_ENABLED": "false",
        "AUTH_REQUIRED": "false",
        "LOG_LEVEL": "WARNING",
        "OUTBOX_ENABLED": "true",
    }


@contextlib.contextmanager
def running_service(
    database_url: URL, workdir: Path, workers: int, overrides: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """`payment-service sandbox` and `payment-service serve --workers N`, ready to take load.

    `overrides` (the bench's --service-env) win over the production settings, for experiments.
    """
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    trip_port, notification_port, control_port, processor_port, api_port = (
        free_port() for _ in range(5)
    )
    processes: list[Process] = []
    try:
        sandbox = start_process(
            "sandbox",
            [
                cli_path(),
                "sandbox",
                "--trip-port",
                str(trip_port),
                "--notification-port",
                str(notification_port),
                "--control-port",
                str(control_port),
                "--processor-port",
                str(processor_port),
            ],
            env={"LOG_LEVEL": "WARNING"},
            cwd=workdir,
            logdir=logdir,
        )
        processes.append(sandbox)
        trip_url = f"http://127.0.0.1:{trip_port}"
        notification_url = f"http://127.0.0.1:{notification_port}"
        wait_http(f"{trip_url}/health", sandbox)
        env = {
            **service_env(database_url, trip_url, notification_url, api_port),
            # GATEWAY=stripe talks to the sandbox processor (a made-up test key).
            "STRIPE_API_BASE": f"http://127.0.0.1:{processor_port}",
            "STRIPE_API_KEY": "sk_test_bench",
            **(overrides or {}),
        }
        api = start_process(
            "api",
            [cli_path(), "serve", "--workers", str(workers), "--port", str(api_port)],
            env=env,
            cwd=workdir,
            logdir=logdir,
        )
        processes.append(api)
        yield _ready(api, api_port, "/health/ready", sandbox, workers, env)
    finally:
        for process in reversed(processes):
            process.stop()


@contextlib.contextmanager
def running_reference(
    database_url: URL, workdir: Path, workers: int, api_key: str, connections: int
) -> Iterator[Service]:
    """`bench/reference_app.py` under uvicorn as `serve` runs the service (httptools,
    uvloop, N workers, no access log), its pool sharing the wrk connections out."""
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "BENCH_REFERENCE_DSN": asyncpg_dsn(database_url),
        "BENCH_REFERENCE_KEY": api_key,
        "BENCH_REFERENCE_POOL": str(max(1, -(-connections // workers))),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    reference = start_process(
        "reference",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.reference_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=workdir,
        logdir=logdir,
    )
    try:
        yield _ready(reference, port, "/health/live", None, workers, env)
    finally:
        reference.stop()


def _ready(
    process: Process,
    port: int,
    ready_path: str,
    sandbox: Process | None,
    workers: int,
    env: dict[str, str],
) -> Service:
    """The started server as a Service, once `ready_path` answers and every worker is up."""
    base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{base_url}{ready_path}", process)
    service = Service(base_url, process, sandbox, workers, env)
    _wait_workers(service)
    return service


def _wait_workers(service: Service, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    """With several workers, /health/ready answers once one is up: wait for all of them."""
    if service.workers <= 1:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(service.worker_pids()) >= service.workers:
            # each worker answers only after its lifespan ran; give the last one a moment
            for _ in range(service.workers * 4):
                httpx.get(f"{service.base_url}/health/live", timeout=2.0)
            return
        time.sleep(0.2)
    raise BenchError(f"only {len(service.worker_pids())} of {service.workers} workers started")
