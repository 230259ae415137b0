"""Refund shapes (SPEC §4)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from payment_service.models.enums import PaymentStatus, RefundStatus
from payment_service.schemas.common import IdempotencyKeyStr, Money, MoneyInput, SafeStr


class RefundRequest(BaseModel):
    """Unknown fields are ignored, as for charges."""

    # The seed document's refund of payment 1: it succeeds on a fresh `make run`.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "idempotency_key": "seed-refund-1",
                    "amount": 50.00,
                    "reason": "Customer complaint",
                }
            ]
        },
    )

    idempotency_key: IdempotencyKeyStr | None = None
    amount: MoneyInput | None = Field(
        None,
        description=(
            "> 0, at most 2 decimals and 12 integer digits (a number, or its string); "
            "default: all that remains"
        ),
    )
    reason: SafeStr | None = Field(None, max_length=500)

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float_noise(cls, value: object) -> object:
        # JSON numbers arrive as float via the standard parser: go through their text.
        return Decimal(repr(value)) if isinstance(value, float) else value


class RefundResponse(BaseModel):
    refund_id: int
    payment_id: int
    refund_amount: Money
    status: PaymentStatus = Field(description="The payment's status after this refund")
    refund_status: RefundStatus = Field(
        description="SUCCEEDED, or PROCESSING while the processor has not confirmed it"
    )
    remaining_refundable: Money
    reason: str | None
    timestamp: datetime


class RefundRead(BaseModel):
    refund_id: int
    payment_id: int
    amount: Money
    status: RefundStatus
    reason: str | None
    created_at: datetime


class RefundList(BaseModel):
    payment_id: int
    refunds: list[RefundRead]
    count: int
    total_refunded: Money
    remaining_refundable: Money
