"""The `payment-service` command line.

Commands: serve, dev, migrate, seed, worker, reconcile, settlement, purge-idempotency-keys,
sandbox, api-keys, outbox.

Every command turns configuration and connection problems into one line on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict, TypeVar

import typer
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models.enums import OutboxStatus
from payment_service.observability import configure_logging

if TYPE_CHECKING:
    from payment_service.services.reconciliation import ReconciliationReport
from payment_service.settings import ConfigurationError, Settings, load_settings

log = logging.getLogger("payment_service.cli")
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Payment Service: idempotent charges, refunds, receipts and notifications.",
)
T = TypeVar("T")

EXIT_CONFIG = 2
EXIT_DATABASE = 3

SANDBOX_MISSING = (
    "the sandbox is not installed: pip install 'payment-service[sandbox]'"
    " (or make venv in a checkout)"
)


class DatabaseUnavailableError(RuntimeError):
    """The configured database does not answer."""


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def sandbox_unavailable(exc: ImportError) -> typer.Exit:
    """`sandbox` and `dev` without payment_sandbox (the `sandbox` extra): one line, exit 2."""
    if (exc.name or "").partition(".")[0] == "payment_sandbox":
        return fail(SANDBOX_MISSING, EXIT_CONFIG)
    return fail(f"the sandbox cannot be imported: {exc}", EXIT_CONFIG)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    configure_logging(settings.log_level)
    return settings


def _describe(url: URL) -> str:
    host = url.host or (url.query.get("host") if url.query else None) or "localhost"
    return f"{host}:{url.port or 5432}/{url.database}"


async def check_database(url: URL, timeout: float = 5.0, wait: float = 0.0) -> None:
    """Connect once (retrying for `wait` seconds) or raise DatabaseUnavailableError."""
    import asyncpg

    from payment_service.db import to_asyncpg_url

    plain = to_asyncpg_url(url).set(drivername="postgresql")
    dsn = plain.render_as_string(hide_password=False)
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=timeout)
            await connection.close()
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() >= deadline:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DatabaseUnavailableError(
                    f"cannot reach the database at {_describe(url)}: {reason}"
                ) from None
            await asyncio.sleep(0.5)


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[URL]:
    """Yield the configured database URL, or start the embedded one (and stop it after)."""
    url = settings.configured_database_url
    if url is not None:
        yield url
        return
    from payment_service.embedded import EmbeddedPostgres, EmbeddedPostgresError

    server = EmbeddedPostgres(settings.embedded_pg_dir)
    try:
        embedded_url = server.start()
    except EmbeddedPostgresError as exc:
        raise fail(str(exc), EXIT_DATABASE) from None
    log.info(
        "no database configured: using an embedded PostgreSQL",
        extra={"data_dir": str(server.data_dir)},
    )
    try:
        from sqlalchemy.engine import make_url

        yield make_url(embedded_url)
    finally:
        server.stop()


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except DatabaseUnavailableError as exc:
        raise fail(str(exc), EXIT_DATABASE) from None


async def _migrate(url: URL) -> None:
    from payment_service.migrations import upgrade

    await check_database(url)
    await upgrade(url)


async def _in_transaction(
    settings: Settings, url: URL, work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Check the database, then run `work` in one transaction on a short-lived engine."""
    from payment_service.db import create_engine, create_session_factory

    await check_database(url)
    engine = create_engine(settings, url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


async def _seed(settings: Settings, url: URL, path: Path) -> str:
    from payment_service.services.seed import load_seed

    report = await _in_transaction(settings, url, lambda session: load_seed(session, path))
    return (
        f"seeded {path}: {report.rows} rows, {report.loaded} loaded, {report.skipped} skipped "
        f"(already present); next payment id > {report.max_payment_id}"
    )


@app.command()
def migrate() -> None:
    """Apply Alembic migrations up to head."""
    settings = _settings()
    with _database(settings) as url:
        _run(_migrate(url))
    typer.echo("database schema is at head")


@app.command()
def seed(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="CSV in the seed format")
    ] = None,
) -> None:
    """Load payments from a CSV (default: seeds/rhfd_payments.csv); safe to run twice."""
    from payment_service.services.seed import SeedFileError, default_seed_file

    settings = _settings()
    path = file or default_seed_file()
    with _database(settings) as url:
        try:
            message = _run(_seed(settings, url, path))
        except SeedFileError as exc:
            raise fail(f"nothing loaded: {exc}", 1) from None
    typer.echo(message)


def _require_gateway(settings: Settings) -> None:
    """Refuse to start a processor-facing command that could not reach the processor."""
    if settings.gateway == "stripe" and settings.stripe_api_key is None:
        raise fail(
            "GATEWAY=stripe needs STRIPE_API_KEY (a Stripe secret key, or the sandbox "
            "processor's with STRIPE_API_BASE); or set GATEWAY=simulator",
            EXIT_CONFIG,
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (SERVICE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (SERVICE_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (WEB_CONCURRENCY)")] = None,
) -> None:
    """Run the API (and the outbox dispatcher unless OUTBOX_ENABLED=false)."""
    import uvicorn

    settings = _settings()
    _require_gateway(settings)
    worker_count = workers or settings.web_concurrency
    if warning := several_workers_warning(worker_count):
        typer.echo(warning, err=True)
    with _database(settings) as url:
        if settings.uses_embedded_database:
            _run(_migrate(url))
            os.environ["DATABASE_URL"] = url.render_as_string(hide_password=False)
        else:
            _run(check_database(url, wait=10.0))
        # uvicorn shuts down gracefully on SIGTERM and then re-raises it; make that
        # re-raised SIGTERM a clean exit (0) rather than death by signal.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        uvicorn.run(
            "payment_service.app:create_app",
            factory=True,
            host=host or settings.service_host,
            port=port or settings.service_port,
            workers=worker_count,
            log_config=None,
            access_log=settings.access_log,
            # X-Forwarded-For only from FORWARDED_ALLOW_IPS (uvicorn's own default would
            # trust 127.0.0.1, letting a local caller choose its rate-limit address).
            proxy_headers=settings.forwarded_allow_ips is not None,
            forwarded_allow_ips=settings.forwarded_allow_ips or "",
            timeout_graceful_shutdown=10,
            **uvicorn_edge_options(settings),
        )


def several_workers_warning(workers: int) -> str | None:
    """The line `serve` prints for more than one worker: /metrics is per process.

    Metrics live in each worker's memory (no Prometheus multiprocess mode), so with N
    workers a scrape sees the one worker that answered it. Production runs one worker
    per container and scales with replicas (compose, k8s); several workers remain for
    local load tests (`make bench`), where /metrics is not read.
    """
    if workers <= 1:
        return None
    return (
        f"warning: {workers} workers (WEB_CONCURRENCY/--workers): /metrics answers for "
        "the one worker that takes each scrape, so its counts are partial; run one worker "
        "per container and scale with replicas"
    )


class EdgeOptions(TypedDict):
    """The keyword arguments `uvicorn_edge_options` hands to `uvicorn.run`."""

    http: type[asyncio.Protocol]
    timeout_keep_alive: int
    server_header: bool
    h11_max_incomplete_event_size: int


def uvicorn_edge_options(settings: Settings) -> EdgeOptions:
    """uvicorn options of `serve` and `dev`: the bounded protocol, timeouts, no Server header.

    The protocol (edge.py) bounds header memory and times out slow headers, which
    uvicorn's own httptools protocol does not; `h11_max_incomplete_event_size` only
    applies to `--http h11`, which we do not use (it is the slower parser).
    """
    from payment_service.edge import configure_protocol

    return {
        "http": configure_protocol(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.request_read_timeout_seconds,
        ),
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "server_header": False,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


@app.command()
def worker() -> None:
    """Run the outbox dispatcher and the reconciler (no API) until stopped."""
    from payment_service.worker.dispatcher import run_worker

    settings = _settings()
    if settings.reconcile_enabled:
        _require_gateway(settings)
    with _database(settings) as url:
        _run(check_database(url, wait=10.0))
        asyncio.run(run_worker(settings, url))


@app.command()
def reconcile() -> None:
    """Compare our payments with the processor's ledger; exit 1 on any difference."""
    settings = _settings()
    _require_gateway(settings)
    with _database(settings) as url:
        report = _run(_reconcile(settings, url))
    for difference in report.differences:
        typer.echo(str(difference))
    if report.without_ledger:
        typer.echo("GATEWAY=simulator keeps no ledger: nothing to compare with the processor")
    else:
        typer.echo(f"compared {report.compared} payments with the processor")
    typer.echo(
        f"checked {report.ledger_checked} payments against the ledger: "
        f"{len(report.differences)} differences"
    )
    if report.differences:
        raise typer.Exit(1)


async def _reconcile(settings: Settings, url: URL) -> ReconciliationReport:
    from payment_service.clients.gateway import GatewayUnavailableError, build_gateway
    from payment_service.db import create_engine, create_session_factory
    from payment_service.services.reconciliation import reconcile

    await check_database(url)
    engine = create_engine(settings, url)
    gateway = build_gateway(settings)
    try:
        return await reconcile(create_session_factory(engine), gateway)
    except GatewayUnavailableError as exc:
        raise fail(f"cannot reach the payment processor: {exc.detail}", 4) from None
    finally:
        await gateway.aclose()
        await engine.dispose()


@app.command()
def settlement(
    day: Annotated[str, typer.Option("--date", help="The UTC day, YYYY-MM-DD")],
    out: Annotated[Path | None, typer.Option("--out", help="CSV file (default: stdout)")] = None,
) -> None:
    """Write the day's per-driver settlement CSV (gross, commission, tips, refunds,
    adjustments, net) from the ledger, with a TOTAL row."""
    from datetime import date

    from payment_service.services.ledger_audit import settlement as settle
    from payment_service.services.ledger_audit import write_settlement_csv

    try:
        when = date.fromisoformat(day)
    except ValueError:
        raise fail(f"--date must be YYYY-MM-DD, not {day!r}", EXIT_CONFIG) from None
    settings = _settings()
    with _database(settings) as url:
        result = _run(_in_transaction(settings, url, lambda session: settle(session, when)))
    if out is None:
        write_settlement_csv(result, sys.stdout)
    else:
        with out.open("w", newline="", encoding="utf-8") as handle:
            write_settlement_csv(result, handle)
        typer.echo(f"wrote {len(result.rows)} drivers to {out}")


@app.command("purge-idempotency-keys")
def purge_idempotency_keys() -> None:
    """Delete idempotency keys older than IDEMPOTENCY_TTL_HOURS."""
    from payment_service.services.idempotency import purge_expired

    settings = _settings()
    with _database(settings) as url:
        count = _run(_in_transaction(settings, url, purge_expired))
    typer.echo(f"purged {count} expired idempotency keys")


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="API port")] = 8082,
    seed_file: Annotated[Path | None, typer.Option("--seed-file", help="Payments CSV")] = None,
    trips_file: Annotated[Path | None, typer.Option("--trips-file", help="Trips CSV")] = None,
    trip_port: Annotated[int, typer.Option(help="Sandbox Trip service port")] = 8081,
    notification_port: Annotated[
        int, typer.Option(help="Sandbox Notification service port")
    ] = 8084,
    control_port: Annotated[int, typer.Option(help="Sandbox control port")] = 8085,
    processor_port: Annotated[
        int, typer.Option(help="Sandbox payment processor (Stripe API subset) port")
    ] = 8087,
) -> None:
    """Everything local: embedded PostgreSQL, migrate, seed, sandbox peers, API on :8082."""
    try:  # before the database starts: the peers come from the sandbox extra
        from payment_sandbox.errors import SandboxError
    except ImportError as exc:
        raise sandbox_unavailable(exc) from None
    settings = _settings()
    from payment_service.devserver import DevServerError, run_dev

    # `dev` is the no-setup path: no API keys needed (the seed's curl lines work as they
    # are; a caller sending a key is still identified by it).
    settings = settings.model_copy(update={"auth_required": False})
    # Always the embedded database, whatever `.env` says.
    local = settings.model_copy(
        update={
            "database_url": None,
            "db_host": None,
            "db_name": None,
            "db_user": None,
            "db_pass": None,
        }
    )
    with _database(local) as url:
        _run(_migrate(url))
        typer.echo(_run(_seed(settings, url, seed_file or _default_seed())))
        try:
            _run(
                run_dev(
                    settings,
                    url,
                    port=port,
                    trips_file=trips_file,
                    peer_ports=(trip_port, notification_port, control_port),
                    processor_port=processor_port,
                )
            )
        except (DevServerError, SandboxError) as exc:
            raise fail(str(exc)) from None


def _default_seed() -> Path:
    from payment_service.services.seed import default_seed_file

    return default_seed_file()


api_keys = typer.Typer(
    no_args_is_help=True,
    help="API keys of the clients that call the API (shown once, stored as hashes).",
)
app.add_typer(api_keys, name="api-keys")


def _parse_rate_limit(value: str | None) -> int | None:
    if value is None:
        return None
    number, _, unit = value.partition("/")
    if unit not in {"minute", "min", "m"} or not number.isdigit() or int(number) < 1:
        raise fail(f"--rate-limit must look like 100/minute, got {value!r}", EXIT_CONFIG)
    return int(number)


@api_keys.command("create")
def api_keys_create(
    name: Annotated[str, typer.Option("--name", help="Unique client name, e.g. trip-service")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="read, charge or refund (repeat for several)")
    ],
    rate_limit: Annotated[
        str | None,
        typer.Option("--rate-limit", help="Own budget per scope, e.g. 100/minute"),
    ] = None,
    key_from_env: Annotated[
        str | None,
        typer.Option(
            "--key-from-env",
            metavar="VAR",
            help="Use the key in environment variable VAR (e.g. from a Secret); "
            "adds it only if absent, so it is safe to repeat.",
        ),
    ] = None,
    skip_if_unset: Annotated[
        bool,
        typer.Option(
            "--skip-if-unset", help="With --key-from-env: do nothing if VAR is unset or empty."
        ),
    ] = False,
) -> None:
    """Create a client and its key; the key is printed once, as the last line."""
    from payment_service.auth.keys import mask
    from payment_service.services.api_keys import ApiKeyError, create_key

    per_minute = _parse_rate_limit(rate_limit)
    presented = None
    if key_from_env is not None:
        presented = os.environ.get(key_from_env)
        if not presented:
            if skip_if_unset:
                typer.echo(f"{key_from_env} is not set: no API key created for {name}")
                return
            raise fail(f"environment variable {key_from_env} is not set", EXIT_CONFIG)
    settings = _settings()
    with _database(settings) as url:
        try:
            created = _run(
                _in_transaction(
                    settings,
                    url,
                    lambda session: create_key(
                        session, name, scope, rate_limit_per_minute=per_minute, key=presented
                    ),
                )
            )
        except ApiKeyError as exc:
            raise fail(str(exc)) from None
    shown = mask(created.prefix)
    if created.key is None:
        state = "added" if created.created else "already present"
        typer.echo(f"API key {shown} of {name}: {state} (from ${key_from_env})")
        return
    typer.echo(f"created API key {shown} for {name} with scopes {', '.join(sorted(set(scope)))}")
    typer.echo("store it now; it is not shown again:")
    typer.echo(created.key)


@api_keys.command("list")
def api_keys_list() -> None:
    """Clients and their keys: name, prefix, scopes, created, revoked (never the key)."""
    from payment_service.services.api_keys import list_keys

    settings = _settings()
    with _database(settings) as url:
        rows = _run(_in_transaction(settings, url, list_keys))
    if not rows:
        typer.echo("no API keys")
        return
    typer.echo("NAME\tPREFIX\tSCOPES\tRATE_LIMIT\tCREATED\tREVOKED\tLAST_USED")
    for row in rows:
        typer.echo(
            "\t".join(
                (
                    row.name,
                    row.prefix,
                    ",".join(row.scopes),
                    f"{row.rate_limit_per_minute}/minute" if row.rate_limit_per_minute else "-",
                    _when(row.created_at),
                    _when(row.revoked_at),
                    _when(row.last_used_at),
                )
            )
        )


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


@api_keys.command("revoke")
def api_keys_revoke(
    name: Annotated[str, typer.Argument(help="Client name whose keys to revoke")],
) -> None:
    """Revoke every key of a client (effective within API_KEY_CACHE_SECONDS)."""
    from payment_service.services.api_keys import ApiKeyError, revoke_keys

    settings = _settings()
    with _database(settings) as url:
        try:
            count = _run(_in_transaction(settings, url, lambda session: revoke_keys(session, name)))
        except ApiKeyError as exc:
            raise fail(str(exc)) from None
    typer.echo(
        f"revoked {count} key(s) of {name}; replicas stop accepting them within "
        f"{settings.api_key_cache_seconds:g} s"
    )


outbox = typer.Typer(
    no_args_is_help=True,
    help="Notification outbox: see what stopped, send it again.",
)
app.add_typer(outbox, name="outbox")


@outbox.command("list")
def outbox_list(
    status: Annotated[
        OutboxStatus | None,
        typer.Option(case_sensitive=False, help="Only messages of this status."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many rows.")] = 50,
) -> None:
    """Messages, newest first, with their event id, status, attempts and last error."""
    from payment_service.repositories.outbox import OutboxRepository

    settings = _settings()
    wanted = status
    with _database(settings) as url:
        rows = _run(
            _in_transaction(
                settings,
                url,
                lambda session: OutboxRepository(session).list_messages(wanted, limit),
            )
        )
    if not rows:
        typer.echo("no outbox messages" + (f" with status {wanted.value}" if wanted else ""))
        return
    typer.echo("ID\tEVENT_ID\tTYPE\tPAYMENT_ID\tSTATUS\tATTEMPTS\tNEXT_ATTEMPT\tLAST_ERROR")
    for row in rows:
        pending = row.status == OutboxStatus.PENDING.value
        error = (row.last_error or "-").replace("\t", " ").replace("\n", " ")
        typer.echo(
            "\t".join(
                (
                    str(row.id),
                    str(row.event_id),
                    row.message_type,
                    str(row.payment_id),
                    row.status,
                    str(row.attempts),
                    _when(row.next_attempt_at) if pending else "-",
                    error,
                )
            )
        )


@outbox.command("requeue")
def outbox_requeue(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Ids of FAILED messages.", show_default=False)
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Requeue every FAILED message.")
    ] = False,
) -> None:
    """FAILED messages back to PENDING, attempts reset, due now (the dispatcher sends them)."""
    from payment_service.repositories.outbox import OutboxRepository

    if bool(ids) == all_failed:
        raise fail("give message ids or --all-failed (not both)", EXIT_CONFIG)
    settings = _settings()
    chosen = None if all_failed else list(ids or ())
    with _database(settings) as url:
        requeued = _run(
            _in_transaction(
                settings, url, lambda session: OutboxRepository(session).requeue(chosen)
            )
        )
    if chosen is not None and (skipped := sorted(set(chosen) - set(requeued))):
        typer.echo(
            "not requeued (no such message, or not FAILED): " + ", ".join(map(str, skipped)),
            err=True,
        )
    typer.echo(f"requeued {len(requeued)} message(s)")
    if chosen is not None and len(requeued) < len(set(chosen)):
        raise typer.Exit(1)


def _register_sandbox() -> None:
    try:
        from payment_sandbox.cli import sandbox
    except ImportError as exc:
        missing = exc

        @app.command(
            "sandbox",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )
        def sandbox_not_installed() -> None:
            """Sandbox Trip, Notification and processor services: not installed (sandbox extra)."""
            raise sandbox_unavailable(missing)

        return
    app.command("sandbox")(sandbox)


_register_sandbox()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
