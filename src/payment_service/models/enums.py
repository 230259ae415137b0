"""Closed value sets shared by models, schemas and CHECK constraints."""

from __future__ import annotations

from enum import StrEnum


class PaymentMethod(StrEnum):
    CARD = "CARD"
    UPI = "UPI"
    WALLET = "WALLET"
    CASH = "CASH"


class PaymentStatus(StrEnum):
    PROCESSING = "PROCESSING"  # the row exists, the processor has not answered yet
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


# SPEC §3a: the only status changes the database accepts (trigger of migration 0005).
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "PROCESSING": frozenset({"SUCCESS", "PENDING", "FAILED"}),
    "PENDING": frozenset({"SUCCESS", "FAILED"}),
    "SUCCESS": frozenset({"PARTIALLY_REFUNDED", "REFUNDED"}),
    "PARTIALLY_REFUNDED": frozenset({"PARTIALLY_REFUNDED", "REFUNDED"}),
    "FAILED": frozenset(),
    "REFUNDED": frozenset(),
}

REFUNDABLE_STATUSES = frozenset({PaymentStatus.SUCCESS, PaymentStatus.PARTIALLY_REFUNDED})


class PaymentKind(StrEnum):
    """What a payment pays for (migration 0008)."""

    FARE = "FARE"
    TIP = "TIP"
    ADJUSTMENT = "ADJUSTMENT"
    CANCELLATION_FEE = "CANCELLATION_FEE"


class RefundStatus(StrEnum):
    PROCESSING = "PROCESSING"  # reserved from what remains; the processor has not confirmed
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # refused by the processor: its amount is refundable again


class IdempotencyState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class OutboxStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


def sql_in(values: type[StrEnum]) -> str:
    """`'A', 'B'` for a CHECK constraint listing an enum's values."""
    return ", ".join(f"'{member.value}'" for member in values)
