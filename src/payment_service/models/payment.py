"""Payments, their refunds, receipts and the append-only event log.

Database-enforced rules live here:
- `uq_payments_live_trip`: a trip has at most one payment that is not FAILED;
- `ck_payments_refund_within_amount`: refunds can never sum past the amount;
- `ck_payments_refund_status_matches_amount` (+ two more): the status says what was
  refunded (REFUNDED = all of it, PARTIALLY_REFUNDED = some, other statuses = none);
- CHECKs on method, status and non-negative money;
- refund rows always sum to `refunded_amount` (deferred constraint triggers, migration 0003);
- `payment_events` rejects UPDATE/DELETE through a trigger (see the migration).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from payment_service.auth.caller import current_actor
from payment_service.models.base import Base, created_at_column
from payment_service.models.enums import (
    PaymentKind,
    PaymentMethod,
    PaymentStatus,
    RefundStatus,
    sql_in,
)

Money = Numeric(12, 2, asdecimal=True)
LIVE_TRIP_PREDICATE = "status <> 'FAILED' AND kind IN ('FARE', 'CANCELLATION_FEE')"
TRIP_PAYMENT_KINDS = ("FARE", "CANCELLATION_FEE")  # the kinds a trip has one live of


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount", name="refund_within_amount"
        ),
        CheckConstraint(
            "(status IN ('PARTIALLY_REFUNDED', 'REFUNDED')) = (refunded_amount > 0)",
            name="refund_status_matches_amount",
        ),
        CheckConstraint(
            "status <> 'REFUNDED' OR refunded_amount = amount", name="refunded_means_all"
        ),
        CheckConstraint(
            "status <> 'PARTIALLY_REFUNDED' OR refunded_amount < amount",
            name="partially_refunded_means_some",
        ),
        CheckConstraint(
            "refund_reserved >= 0 AND refunded_amount + refund_reserved <= amount",
            name="refunds_in_flight_within_amount",
        ),
        CheckConstraint(f"method IN ({sql_in(PaymentMethod)})", name="method_valid"),
        CheckConstraint(f"status IN ({sql_in(PaymentStatus)})", name="status_valid"),
        CheckConstraint(f"kind IN ({sql_in(PaymentKind)})", name="kind_valid"),
        CheckConstraint(
            "commission_rate >= 0 AND commission_rate <= 1", name="commission_rate_valid"
        ),
        CheckConstraint(
            "(kind IN ('TIP', 'ADJUSTMENT')) = (parent_payment_id IS NOT NULL)",
            name="parent_matches_kind",
        ),
        # One live FARE or CANCELLATION_FEE per trip; tips and adjustments come on top
        # (migration 0008). `charge_start.start_charge` names this predicate exactly.
        Index(
            "uq_payments_live_trip",
            "trip_id",
            unique=True,
            postgresql_where=text(LIVE_TRIP_PREDICATE),
        ),
        Index("ix_payments_created_at_id", text("created_at DESC"), text("id DESC")),
        Index("ix_payments_trip_id", "trip_id"),
        Index("ix_payments_status", "status"),
        Index("ix_payments_rider_id", "rider_id"),
        Index("ix_payments_driver_id", "driver_id"),
        Index(
            "ix_payments_unsettled",
            "updated_at",
            postgresql_where=text("status IN ('PROCESSING', 'PENDING')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    trip_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    rider_id: Mapped[int | None] = mapped_column(BigInteger)
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="INR")
    method: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    refunded_amount: Mapped[Decimal] = mapped_column(Money, nullable=False, server_default="0")
    # What refunds still PROCESSING at the processor have set aside (migration 0005).
    refund_reserved: Mapped[Decimal] = mapped_column(Money, nullable=False, server_default="0")
    reference: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    gateway_reference: Mapped[str | None] = mapped_column(String(64))
    # The one key the processor sees for this payment: stable across retries and restarts.
    gateway_idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # FARE, TIP, ADJUSTMENT or CANCELLATION_FEE (migration 0008); tips and adjustments
    # point at the trip's fare payment.
    kind: Mapped[str] = mapped_column(String(24), nullable=False, server_default="FARE")
    parent_payment_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("payments.id"), index=True
    )
    # What the charge learned from the Trip service (zones, distance, times, fare parts),
    # so the receipt needs no Trip call.
    trip_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The platform's share when it was charged (PLATFORM_COMMISSION_RATE; 0 for tips).
    commission_rate: Mapped[Decimal] = mapped_column(
        Numeric(5, 4), nullable=False, server_default="0.2000"
    )
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class Refund(Base):
    """A refund at the processor: PROCESSING (reserved) -> SUCCEEDED | FAILED."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(f"status IN ({sql_in(RefundStatus)})", name="status_valid"),
        CheckConstraint("kind IN ('REFUND', 'ADJUSTMENT')", name="kind_valid"),
        Index(
            "ix_refunds_processing", "created_at", postgresql_where=text("status = 'PROCESSING'")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    payment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("payments.id"), nullable=False, index=True
    )
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="SUCCEEDED")
    gateway_idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    gateway_reference: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # REFUND, or ADJUSTMENT when a downward fare adjustment gives money back (0008).
    kind: Mapped[str] = mapped_column(String(16), nullable=False, server_default="REFUND")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class Receipt(Base):
    """Issued once per payment so its number never changes between requests."""

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    payment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("payments.id"), nullable=False, unique=True
    )
    receipt_number: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    issued_at: Mapped[datetime] = created_at_column()


class PaymentEvent(Base):
    """Append-only history of every state change of a payment."""

    __tablename__ = "payment_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    payment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("payments.id"), nullable=False, index=True
    )
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24), nullable=False)
    amount: Mapped[Decimal | None] = mapped_column(Money)
    data: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # Who caused the event: the API client's name (migration 0006). Defaults to the
    # caller of the request being handled, so every insert records it unless told otherwise.
    actor: Mapped[str | None] = mapped_column(String(64), default=current_actor)
    created_at: Mapped[datetime] = created_at_column()


class WebhookEvent(Base):
    """A processor webhook event, stored once per (provider, event id): replays change nothing."""

    __tablename__ = "gateway_events"
    __table_args__ = (UniqueConstraint("provider", "event_id", name="uq_gateway_events_event"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    event_id: Mapped[str] = mapped_column(String(255), nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    payment_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("payments.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    received_at: Mapped[datetime] = created_at_column()
