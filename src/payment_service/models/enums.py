"""Closed value sets shared by models, schemas and CHECK constraints."""

from __future__ import annotations

from enum import StrEnum


class PaymentMethod(StrEnum):
    CARD = "CARD"
    UPI = "UPI"
    WALLET = "WALLET"
    CASH = "CASH"


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


REFUNDABLE_STATUSES = frozenset({PaymentStatus.SUCCESS, PaymentStatus.PARTIALLY_REFUNDED})


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
