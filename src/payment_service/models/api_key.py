"""API clients and their keys (SPEC §7a).

A client is a caller of the API (e.g. `trip-service`): its id scopes idempotency
keys and its name is the `actor` of the events it causes. A key is stored only as
the SHA-256 of its full value and found by its unique public prefix; revoking
sets `revoked_at` (rows are never deleted, so audit names stay resolvable).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    String,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from payment_service.models.base import Base, created_at_column

SCOPES = ("read", "charge", "refund")
_SCOPE_LIST = ", ".join(f"'{scope}'" for scope in SCOPES)


class ApiClient(Base):
    """One calling service; owns keys (rotation adds a key, revocation retires them)."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = created_at_column()


class ApiKey(Base):
    """A key of a client: its prefix (public, unique), hash, scopes and optional own limit."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            f"scopes <@ ARRAY[{_SCOPE_LIST}]::varchar[] AND cardinality(scopes) > 0",
            name="scopes_valid",
        ),
        CheckConstraint(
            "rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0",
            name="rate_limit_positive",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    client_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("api_clients.id"), nullable=False, index=True
    )
    prefix: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)), nullable=False)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = created_at_column()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
