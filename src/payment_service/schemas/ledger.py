"""Shapes of tips, fare adjustments and the ledger's read endpoints (issue 12)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from payment_service.models.enums import PaymentKind
from payment_service.schemas.common import IdempotencyKeyStr, Money, MoneyInput, SafeStr


def _decimal_from_float(value: object) -> object:
    return Decimal(repr(value)) if isinstance(value, float) else value


class TipRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"idempotency_key": "tip-trip-1", "amount": 20.00}]},
    )

    idempotency_key: IdempotencyKeyStr | None = None
    amount: MoneyInput = Field(
        description="> 0, at most 2 decimals; all of it goes to the driver (TIP_MAX_AMOUNT)"
    )

    _no_float_noise = field_validator("amount", mode="before")(_decimal_from_float)


class AdjustmentRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"idempotency_key": "adjust-trip-1", "new_fare": 120.50, "reason": "Toll added"}
            ]
        },
    )

    idempotency_key: IdempotencyKeyStr | None = None
    new_fare: MoneyInput = Field(description="The trip's corrected fare (> 0, 2 decimals)")
    reason: SafeStr = Field(min_length=1, max_length=500)

    _no_float_noise = field_validator("new_fare", mode="before")(_decimal_from_float)


class LedgerLineRead(BaseModel):
    account: str = Field(description="e.g. driver:201, platform:commission, processor:clearing")
    amount: Money = Field(description="Debit > 0, credit < 0; a journal's lines sum to 0")


class LedgerEntry(BaseModel):
    journal_id: int
    entry_type: str = Field(description="CAPTURE or REFUND")
    payment_kind: PaymentKind
    payment_id: int
    refund_id: int | None
    trip_id: int
    driver_id: int | None
    rider_id: int | None
    amount: Money
    description: str | None
    created_at: datetime
    lines: list[LedgerLineRead]


class TripLedger(BaseModel):
    trip_id: int
    entries: list[LedgerEntry]
    count: int
    total: int
    limit: int
    offset: int


class EarningsFigures(BaseModel):
    gross_fares: Money = Field(description="Fares and cancellation fees captured")
    adjustments: Money = Field(description="Upward fare adjustments captured")
    tips: Money
    refunds: Money = Field(description="Refunds (downward adjustments included)")
    commission: Money = Field(description="The platform's commission, net of reversals")
    net: Money = Field(
        description="What the driver earned: gross + adjustments + tips - refunds - commission"
    )


class EarningsDay(EarningsFigures):
    day: date
    entries: int


class DriverEarnings(BaseModel):
    driver_id: int
    date_from: date | None
    date_to: date | None
    totals: EarningsFigures
    days: list[EarningsDay]
    count: int
    total: int = Field(description="Days with entries in the range")
    limit: int
    offset: int
