"""Shared fixtures: a real PostgreSQL (TEST_DATABASE_URL, else embedded), migrated once.

- `database_url`: a fresh database for this test session, migrated to head.
- `settings`: Settings for that database (no `.env`; auth, rate limit and dispatcher off).
- `app` / `client`: the ASGI app with its lifespan running, and an httpx client over it.
- `sandbox` / `peers`: the sandbox Trip and Notification services on loopback.
- `seeded`: truncates every table and loads the project's seed CSV (for exact counts).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from payment_sandbox.runner import Sandbox, SandboxConfig, build_sandbox
from payment_service.app import create_app
from payment_service.models import Payment
from payment_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "seeds" / "rhfd_payments.csv"
TRIPS_FILE = ROOT / "seeds" / "rhfd_trips.csv"
SHARED_FIXTURE = ROOT.parent / "shared" / "fixtures" / "rhfd_payments.csv"
TABLES = (
    "ledger_lines, ledger_journals, gateway_events, payment_events, refunds, receipts, "
    "notification_outbox, idempotency_keys, payments, api_keys, api_clients"
)


def _asyncpg(url: str | URL) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+asyncpg")


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """The PostgreSQL server's admin URL: TEST_DATABASE_URL, else an embedded server."""
    if configured := os.environ.get("TEST_DATABASE_URL"):
        yield _asyncpg(configured)
        return
    from payment_service.embedded import EmbeddedPostgres

    # Not under pytest's basetemp: a concurrent pytest run re-locks that folder to its
    # owner, and the embedded server runs as another system user when we are root.
    parent = Path(tempfile.mkdtemp(prefix="payment-test-pg-"))
    parent.chmod(0o755)
    server = EmbeddedPostgres(parent / "data")
    url = server.start()
    try:
        yield _asyncpg(url)
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


async def admin_sql(server_url: URL, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def fresh_database(server_url: URL) -> AsyncIterator[URL]:
    """An empty database of its own, dropped at the end of the session."""
    name = f"payment_test_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield server_url.set(database=name)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_url(fresh_database: URL) -> str:
    """The session's database, migrated to head (as `postgresql+asyncpg://...`)."""
    from payment_service.migrations import upgrade

    await upgrade(fresh_database)
    return fresh_database.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def sandbox() -> AsyncIterator[Sandbox]:
    """The sandbox Trip and Notification services on free loopback ports, for the session."""
    peers = build_sandbox(
        SandboxConfig(
            trip_port=0,
            notification_port=0,
            processor_port=0,
            control_port=0,
            trips_file=TRIPS_FILE,
            log_level=None,
        )
    )
    async with peers:
        yield peers


@pytest.fixture
async def peers(sandbox: Sandbox) -> AsyncIterator[Sandbox]:
    """The sandbox, every peer up and normal with nothing recorded, before and after a test."""
    await sandbox.reset()
    yield sandbox
    await sandbox.reset()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings isolated from the developer's environment and `.env`."""
    values: dict[str, object] = {
        "database_url": database_url,
        "rate_limit_enabled": False,
        # Tests of authentication turn it on; the rest act as the default client.
        "auth_required": False,
        "outbox_enabled": False,
        "reconcile_enabled": False,
        "gateway": "simulator",
        "log_level": "WARNING",
        "trip_service_url": "http://127.0.0.1:9",
        "notification_service_url": "http://127.0.0.1:9",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings, run_dispatcher=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def insert_payment(session: AsyncSession, **overrides: object) -> int:
    """A minimal SUCCESS payment on a trip of its own (for tests needing a payment id)."""
    values: dict[str, object] = {
        "trip_id": 7_000_000_000 + uuid.uuid4().int % 1_000_000_000,
        "amount": Decimal("10.50"),
        "method": "CARD",
        "status": "SUCCESS",
        "reference": f"TEST-{uuid.uuid4().hex[:20]}",
    }
    values.update(overrides)
    result = await session.execute(insert(Payment).values(**values).returning(Payment.id))
    return result.scalar_one()


async def reset_database(engine: AsyncEngine, seed_file: Path | None = SEED_FILE) -> None:
    """Empty every table and reload the seed (the event log's trigger allows TRUNCATE)."""
    from payment_service.services.seed import load_seed

    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    if seed_file is not None:
        async with AsyncSession(engine) as session, session.begin():
            await load_seed(session, seed_file)


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncEngine:
    """A database holding exactly the project's seed rows."""
    await reset_database(engine)
    return engine


@pytest.fixture
async def empty_db(engine: AsyncEngine) -> AsyncEngine:
    await reset_database(engine, None)
    return engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/e2e are marked e2e (select or skip them with -m)."""
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
