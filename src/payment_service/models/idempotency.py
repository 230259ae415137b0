"""Idempotency keys: one row per (operation, client, key), leased while in flight."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from payment_service.models.base import Base, created_at_column
from payment_service.models.enums import IdempotencyState, sql_in


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("operation", "client_id", "key", name="uq_idempotency_keys_scope"),
        CheckConstraint(f"state IN ({sql_in(IdempotencyState)})", name="state_valid"),
        CheckConstraint(
            "state <> 'COMPLETED' OR (response_status IS NOT NULL AND response_body IS NOT NULL)",
            name="completed_has_response",
        ),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    operation: Mapped[str] = mapped_column(String(32), nullable=False)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    payment_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("payments.id"))
    # A refund key is bound to its refund row, so a retry resumes it (migration 0005).
    refund_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("refunds.id"))
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
