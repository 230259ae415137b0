"""The double-entry ledger: one journal per money movement, lines that sum to zero.

Sign convention: a line's amount is positive for a debit, negative for a credit.
Accounts are strings: `processor:clearing` (money the processor holds for us),
`driver_cash:<id>` (cash a driver collected), `driver:<id>` (what we owe a driver),
`platform:commission` (our revenue). Database-enforced (migration 0008): a deferred
constraint trigger refuses at commit any journal whose lines do not sum to zero or
that has fewer than two lines; journals and lines refuse UPDATE and DELETE.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from payment_service.models.base import Base, created_at_column
from payment_service.models.enums import PaymentKind, sql_in
from payment_service.models.payment import Money


class LedgerJournal(Base):
    """One money movement: a capture (of a fare, tip, adjustment or fee) or a refund."""

    __tablename__ = "ledger_journals"
    __table_args__ = (
        CheckConstraint("entry_type IN ('CAPTURE', 'REFUND')", name="entry_type_valid"),
        CheckConstraint(f"payment_kind IN ({sql_in(PaymentKind)})", name="payment_kind_valid"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "(entry_type = 'REFUND') = (refund_id IS NOT NULL)", name="refund_matches_type"
        ),
        UniqueConstraint("refund_id", name="uq_ledger_journals_refund_id"),
        Index(
            "uq_ledger_journals_capture",
            "payment_id",
            unique=True,
            postgresql_where=text("entry_type = 'CAPTURE'"),
        ),
        Index("ix_ledger_journals_driver_created", "driver_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    entry_type: Mapped[str] = mapped_column(String(16), nullable=False)
    payment_kind: Mapped[str] = mapped_column(String(24), nullable=False)
    payment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("payments.id"), nullable=False, index=True
    )
    refund_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("refunds.id"))
    trip_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    rider_id: Mapped[int | None] = mapped_column(BigInteger)
    # The money moved (always > 0; `entry_type` says which way).
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


class LedgerLine(Base):
    """One signed amount on one account (debit > 0, credit < 0)."""

    __tablename__ = "ledger_lines"
    __table_args__ = (CheckConstraint("amount <> 0", name="amount_non_zero"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    journal_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ledger_journals.id"), nullable=False, index=True
    )
    account: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    created_at: Mapped[datetime] = created_at_column()
