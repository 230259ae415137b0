"""Notification outbox: written in the charge/refund transaction, drained by the dispatcher."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from payment_service.models.base import Base, created_at_column
from payment_service.models.enums import OutboxStatus, sql_in


class OutboxMessage(Base):
    __tablename__ = "notification_outbox"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_in(OutboxStatus)})", name="status_valid"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index(
            "ix_notification_outbox_due",
            "next_attempt_at",
            postgresql_where=text("status = 'PENDING'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    # Global identity of the message (the local `id` repeats across databases): the
    # receiver's Idempotency-Key and Standard Webhooks `webhook-id`.
    event_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), nullable=False, unique=True, server_default=text("gen_random_uuid()")
    )
    message_type: Mapped[str] = mapped_column(String(16), nullable=False)
    payment_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("payments.id"), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # W3C trace context current when enqueued: the delivery span becomes its child.
    traceparent: Mapped[str | None] = mapped_column(String(64))
