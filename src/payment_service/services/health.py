"""Database health with a hard deadline, so /health answers even when the DB hangs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import lru_cache

import asyncpg

from payment_service.db import RawReads

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 1.5


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What one probe found. `problem` says why the database is not usable, in words fit
    for a client (no driver messages, hosts or SQL); None when it answered."""

    up: bool
    revision: str | None
    problem: str | None = None


REVISION_SQL = "SELECT version_num FROM alembic_version"


async def probe(reads: RawReads, timeout: float = HEALTH_TIMEOUT_SECONDS) -> SchemaState:
    """Reachability and Alembic revision from one query under one deadline."""
    try:
        async with asyncio.timeout(timeout):
            return SchemaState(True, await reads.fetchval(REVISION_SQL))
    except asyncpg.UndefinedTableError:  # reachable, but no alembic_version table: not migrated
        return SchemaState(True, None)
    except TimeoutError:
        log.warning("database check timed out", extra={"timeout_seconds": timeout})
        return SchemaState(False, None, f"database did not answer within {timeout:g} s")
    except Exception as exc:
        log.warning("database check failed", extra={"error": type(exc).__name__})
        return SchemaState(False, None, "database unreachable")


class SharedProbe:
    """`probe` for the health routes, one query however many probes arrive at once.

    A probe that arrives while another is in flight awaits that one's answer instead
    of sending its own query: orchestrators, load balancers and dashboards polling
    together cost the database one statement. Nothing is cached: every answer is that
    of a query still running when the probe arrived. The shared query is shielded, so
    one caller giving up does not cancel it for the others.
    """

    def __init__(self, reads: RawReads, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        self._reads = reads
        self._timeout = timeout
        self._in_flight: asyncio.Future[SchemaState] | None = None

    async def __call__(self) -> SchemaState:
        shared = self._in_flight
        if shared is None:
            shared = self._in_flight = asyncio.ensure_future(probe(self._reads, self._timeout))
            shared.add_done_callback(self._finished)
        return await asyncio.shield(shared)

    def _finished(self, done: asyncio.Future[SchemaState]) -> None:
        if self._in_flight is done:
            self._in_flight = None


def not_ready_reason(state: SchemaState, head: str | None) -> str | None:
    """Why readiness is DOWN (None when ready): what an operator acts on first."""
    if not state.up:
        return state.problem or "database unreachable"
    if state.revision is None:
        return f"schema not migrated, head is {head}" if head else "schema not migrated"
    if head is not None and state.revision != head:
        return f"schema at {state.revision}, head is {head}"
    return None


@lru_cache(maxsize=1)
def expected_revision() -> str | None:
    """The head revision shipped with this build (None when migrations aren't shipped)."""
    from alembic.script import ScriptDirectory
    from payment_service.migrations import alembic_config

    try:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()
    except Exception:
        return None
