"""RawReads: reads on asyncpg through the engine's pool give every connection back usable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from payment_service.db import RawReads


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A pool of exactly one connection, so a connection left broken would fail the next read."""
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    yield engine
    await engine.dispose()


async def test_reads_return_their_connection_to_the_pool(one_connection: AsyncEngine) -> None:
    reads = RawReads(one_connection)

    for n in range(5):
        assert await reads.fetchval("SELECT $1::int + 1", n) == n + 1
    assert one_connection.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_statement_error_keeps_the_connection(one_connection: AsyncEngine) -> None:
    reads = RawReads(one_connection)

    with pytest.raises(asyncpg.UndefinedTableError):
        await reads.fetch("SELECT * FROM no_such_table")

    assert await reads.fetchrow("SELECT 1 AS one") == (1,)


async def test_a_read_cancelled_mid_statement_discards_its_connection(
    one_connection: AsyncEngine,
) -> None:
    """A deadline in the middle of a statement: the next read gets a fresh connection."""
    reads = RawReads(one_connection)
    first = await reads.fetchval("SELECT pg_backend_pid()")

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await reads.fetchval("SELECT pg_sleep(5)")

    async with asyncio.timeout(2):
        assert await reads.fetchval("SELECT pg_backend_pid()") != first


async def test_a_server_that_went_away_costs_one_failed_read_not_one_per_connection(
    database_url: str,
) -> None:
    """Every pooled connection's backend is terminated (a restart, as the pool sees it),
    pre-ping off so none is caught at checkout: the first read fails as an outage and
    the pool recycles the rest of that generation, so the next reads succeed."""
    engine = create_async_engine(database_url, pool_size=3, max_overflow=0, pool_timeout=2)
    try:
        reads = RawReads(engine)
        pids = await asyncio.gather(
            *(reads.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)") for _ in range(3))
        )
        assert len(set(pids)) == 3  # the pool holds three connections
        admin = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids
            )
        finally:
            await admin.close()
        await asyncio.sleep(0.3)

        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(await reads.fetchval("SELECT pg_backend_pid()"))
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                outcomes.append(type(error).__name__)
        assert isinstance(outcomes[0], str), outcomes  # the first learns the server went away
        assert all(isinstance(pid, int) and pid not in pids for pid in outcomes[1:]), outcomes
    finally:
        await engine.dispose()
