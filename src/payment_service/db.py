"""Engine and session factory; the lifespan owns them, requests borrow sessions.

Transactions are opened by the service layer (or the per-request unit of work in
`dependencies.py`); repositories only flush.
"""

from __future__ import annotations

import ipaddress
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, event, exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_, greenlet_spawn

from payment_service.jsonutil import json_text, loads
from payment_service.settings import Settings

SessionFactory = async_sessionmaker[AsyncSession]


def to_asyncpg_url(url: str | URL) -> URL:
    """Normalise any PostgreSQL URL (psql-style, embedded socket URI) to the asyncpg driver."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+asyncpg")


def _is_local(url: URL) -> bool:
    """A unix socket or a loopback address: no network between us and PostgreSQL."""
    hosts = [host for host in (url.host, url.query.get("host")) if host]
    if not hosts:
        return True  # no host at all: libpq's default, the local socket
    for host in hosts:
        host = str(host)
        if host.startswith("/") or host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


def ssl_connect_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """TLS as the URL asks (`sslmode=` / `ssl=`), else off on loopback and unix sockets.

    asyncpg's default (`prefer`) negotiates TLS on every connect and builds an
    SSLContext each time, which buys nothing on a local socket. libpq's `sslmode`
    is translated to asyncpg's `ssl` (asyncpg takes no `sslmode` keyword).
    """
    query = dict(url.query)
    mode = query.pop("sslmode", None)
    if "ssl" in query or (mode is None and not _is_local(url)):
        return url, {}  # explicit `ssl=`, or a remote server: asyncpg's own default
    stripped = url.set(query=query)
    return stripped, {"ssl": mode if mode is not None else False}


def _check_alive(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    """Pre-ping without a round trip: a connection the server closed (a restart, an idle
    timeout) is known closed to asyncpg once its socket saw the EOF; the pool then
    discards it and checks out another."""
    raw = getattr(dbapi_connection, "_connection", None)
    if raw is not None and raw.is_closed():
        raise exc.DisconnectionError("connection closed by the server")


def create_engine(settings: Settings, url: URL) -> AsyncEngine:
    """An asyncpg engine with a bounded pool and connect timeout, sized per worker.

    DB_POOL_PRE_PING checks at checkout that the server has not closed the connection
    (a database restart), locally: SQLAlchemy's own pre-ping costs three round trips
    (BEGIN, `;`, ROLLBACK) per checkout. A connection that died unnoticed still fails
    its statement, which SQLAlchemy recognises as a disconnect and recycles the whole
    pool for. `hide_parameters` keeps bound values (idempotency keys, ids, amounts) out
    of exception messages and logs.
    """
    url, ssl_args = ssl_connect_args(url)
    engine = create_async_engine(
        url,
        # PostgreSQL's default, named: connections the AUTOCOMMIT read engine borrowed
        # come back to this level, so every transaction begins alike.
        isolation_level="READ COMMITTED",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        hide_parameters=True,
        json_serializer=json_text,
        json_deserializer=loads,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {"application_name": "payment-service"},
            **ssl_args,
        },
    )
    if settings.db_pool_pre_ping:
        event.listen(engine.sync_engine.pool, "checkout", _check_alive)
    return engine


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded objects usable after commit (no lazy reload round trips)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class RawReads:
    """One-statement reads run on the asyncpg connection of a pooled connection.

    For the hot read routes (GET a payment, the list, health): SQLAlchemy's
    Connection/Session layers around a statement cost several times the statement
    itself, and those reads need neither a transaction (asyncpg runs each statement in
    autocommit, as the AUTOCOMMIT read engine did) nor ORM objects. Connections come
    from the engine's pool, so the pool's size, timeout and pre-ping apply unchanged.
    The SQL lives in the repositories; this only borrows and returns the connection.

    With `tracer` (tracing on), each read is a client span like the engine's statements.
    """

    def __init__(self, engine: AsyncEngine, tracer: Any = None) -> None:
        self._engine = engine.sync_engine
        self._tracer = tracer
        _RAW_BY_ENGINE[self._engine] = self  # the services find the app's (traced) one

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows (asyncpg Records) of `sql` with positional `$n` arguments."""
        return await self._run("fetch", sql, args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """The first row of `sql`, or None."""
        return await self._run("fetchrow", sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of `sql`, or None."""
        return await self._run("fetchval", sql, args)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        if self._tracer is None:
            return await self._borrowed(method, sql, args)
        from opentelemetry.trace import SpanKind

        with self._tracer.start_as_current_span(
            sql.split(None, 1)[0], kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"}
        ):
            return await self._borrowed(method, sql, args)

    async def _borrowed(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        # Checkout may connect and checkin may close (a full or disposed pool, after a
        # database restart): SQLAlchemy's asyncpg adapter does that IO in a greenlet, so
        # the whole borrow runs in one, the statement awaited from inside it.
        return await greenlet_spawn(self._borrow_and_run, method, sql, args)

    def _borrow_and_run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        import asyncpg

        try:
            return self._borrow_and_run_once(method, sql, args)
        except asyncpg.InternalClientError:
            # The pooled connection was not idle: PostgreSQL, shutting down, sent it an
            # error while it sat in the pool, and asyncpg refused to start the statement
            # ("another operation is in progress"). Nothing was sent, so once on another.
            return self._borrow_and_run_once(method, sql, args)

    def _borrow_and_run_once(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        dialect = self._engine.dialect
        try:
            fairy = self._engine.raw_connection()
        except dialect.loaded_dbapi.Error as error:
            # A failed connect, as SQLAlchemy's Connection would raise it (the error
            # handlers answer 503 for an outage).
            raise exc.DBAPIError.instance(
                None,
                None,
                error,
                dialect.loaded_dbapi.Error,
                connection_invalidated=dialect.is_disconnect(error, None, None),
                dialect=dialect,
            ) from error
        connection: Any = fairy.driver_connection
        try:
            result = await_(getattr(connection, method)(sql, *args))
        except BaseException as error:
            if _answered_by_the_server(error) and not connection.is_closed():
                fairy.close()  # e.g. a constraint or a trigger refused it: the link is fine
            else:
                # Cancelled mid-statement (a deadline), a broken socket, a server going
                # away: nobody can know the protocol's state (asyncpg would refuse the next
                # statement, "another operation is in progress"), so the pool drops it.
                connection.terminate()
                if _server_went_away(error):
                    # As SQLAlchemy does on a disconnect: the pool's other connections date
                    # from the same server and are recycled at their next checkout, so one
                    # restart costs one failed statement, not one per pooled connection.
                    self._engine.pool._invalidate(fairy, error)
                else:
                    fairy.invalidate()
            raise
        fairy.close()  # back to the pool (its reset is a no-op: no transaction was begun)
        return result


def _answered_by_the_server(error: BaseException) -> bool:
    """An error PostgreSQL sent as the statement's answer, on a connection that goes on
    (not one of the outages `errors.is_database_unavailable` knows: a shutdown, a lost link)."""
    import asyncpg

    return isinstance(error, asyncpg.PostgresError) and not _server_went_away(error)


def _server_went_away(error: BaseException) -> bool:
    """A lost link or a server shutting down, as opposed to a cancelled statement."""
    from payment_service.errors import is_database_unavailable

    return isinstance(error, Exception) and is_database_unavailable(error)


_RAW_BY_ENGINE: weakref.WeakKeyDictionary[Any, RawReads] = weakref.WeakKeyDictionary()


def raw_statements(session_factory: SessionFactory) -> RawReads:
    """The RawReads on the factory's engine, for work that is one statement (a charge's
    three transactions): the app's own, traced one, else one made here."""
    engine: AsyncEngine = session_factory.kw["bind"]
    found = _RAW_BY_ENGINE.get(engine.sync_engine)
    return found if found is not None else RawReads(engine)


@dataclass(frozen=True, slots=True)
class Positional:
    """SQL written with `:name` placeholders, as asyncpg takes it: `$n` and the names'
    order (a name used twice keeps its number), so the SQL reads well where it lives."""

    sql: str
    names: tuple[str, ...]

    @staticmethod
    def of(sql: str) -> Positional:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        return Positional(_NAMED.sub(number, sql), tuple(names))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
