"""Engine and session factory; the lifespan owns them, requests borrow sessions.

Transactions are opened by the service layer (or the per-request unit of work in
`dependencies.py`); repositories only flush.
"""

from __future__ import annotations

from sqlalchemy import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from payment_service.jsonutil import dumps, loads
from payment_service.settings import Settings

SessionFactory = async_sessionmaker[AsyncSession]


def to_asyncpg_url(url: str | URL) -> URL:
    """Normalise any PostgreSQL URL (psql-style, embedded socket URI) to the asyncpg driver."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+asyncpg")


def create_engine(settings: Settings, url: URL) -> AsyncEngine:
    """An asyncpg engine with a bounded pool and connect timeout, sized per worker.

    `pool_pre_ping` finds connections a database restart left dead before a request
    uses them (and SQLAlchemy then recycles the whole pool); `hide_parameters` keeps
    bound values (idempotency keys, ids, amounts) out of exception messages and logs.
    """
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=1800,
        hide_parameters=True,
        json_serializer=lambda value: dumps(value).decode("utf-8"),
        json_deserializer=loads,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "server_settings": {"application_name": "payment-service"},
        },
    )


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded objects usable after commit (no lazy reload round trips)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
