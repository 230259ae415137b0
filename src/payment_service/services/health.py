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


async def schema_state(
    reads: RawReads, timeout: float = HEALTH_TIMEOUT_SECONDS
) -> tuple[bool, str | None]:
    """(database reachable, Alembic revision or None) from one query under one deadline."""
    state = await probe(reads, timeout)
    return state.up, state.revision


def not_ready_reason(state: SchemaState, head: str | None) -> str | None:
    """Why readiness is DOWN (None when ready): what an operator acts on first."""
    if not state.up:
        return state.problem or "database unreachable"
    if state.revision is None:
        return f"schema not migrated, head is {head}" if head else "schema not migrated"
    if head is not None and state.revision != head:
        return f"schema at {state.revision}, head is {head}"
    return None


async def database_is_up(reads: RawReads, timeout: float = HEALTH_TIMEOUT_SECONDS) -> bool:
    """Whether the database answers within `timeout` (the same single query as readiness)."""
    up, _revision = await schema_state(reads, timeout)
    return up


@lru_cache(maxsize=1)
def expected_revision() -> str | None:
    """The head revision shipped with this build (None when migrations aren't shipped)."""
    from alembic.script import ScriptDirectory
    from payment_service.migrations import alembic_config

    try:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()
    except Exception:
        return None
