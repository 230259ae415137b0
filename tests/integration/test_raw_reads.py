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
