"""Receipt shape (SPEC §5): the payment, its refunds and what the rider paid in the end."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, WithJsonSchema

from payment_service.schemas.common import Money
from payment_service.schemas.payment import PaymentRead


class ReceiptRefund(BaseModel):
    refund_id: int
    amount: Money
    reason: str | None
    created_at: datetime


class ReceiptTrip(BaseModel):
    """The trip as the charge learned it from the Trip service (null when it said nothing)."""

    pickup_zone: str | None = None
    drop_zone: str | None = None
    distance_km: Annotated[Decimal, WithJsonSchema({"type": "number"})] | None = None
    started_at: str | None = None
    ended_at: str | None = None


class ReceiptTip(BaseModel):
    payment_id: int
    amount: Money
    status: str
    refunded_amount: Money
    created_at: datetime


class ReceiptAdjustment(BaseModel):
    old_fare: Money
    new_fare: Money
    reason: str | None
    adjustment_payment_id: int | None = Field(description="The ADJUSTMENT payment (fare up)")
    refund_id: int | None = Field(description="The refund giving the difference back (down)")
    status: str | None = Field(description="The ADJUSTMENT payment's status (fare up)")
    created_at: datetime


class ReceiptRead(PaymentRead):
    """A payment's receipt; `receipt_number` is issued once and never changes."""

    receipt_id: str = Field(description='"RCP-" + the payment reference')
    receipt_number: str = Field(
        description="Issued on the first request and stored: RN-<yyyymmdd>-<payment id>",
        examples=["RN-20240226-00000008"],
    )
    refunds: list[ReceiptRefund] = Field(description="Refunds of the payment, oldest first")
    net_amount: Money = Field(description="amount − refunded_amount")
    charged: bool = Field(
        description="Whether money was collected (false for FAILED and PENDING payments)"
    )
    issued_at: datetime = Field(description="When the receipt was first issued")
    generated_at: datetime = Field(description="When this response was produced")
    merchant_name: str | None = Field(None, description="MERCHANT_NAME")
    trip: ReceiptTrip | None = None
    fare_breakdown: dict[str, Money] | None = Field(
        None,
        description=(
            "base + distance + surge = total for a fare (surge_multiplier too); "
            "cancellation_fee for a fee"
        ),
    )
    tips: list[ReceiptTip] = Field([], description="Tips on this fare payment")
    adjustments: list[ReceiptAdjustment] = Field(
        [], description="Fare adjustments: both fares and the reason"
    )
    tips_total: Money = Field(Decimal("0.00"), description="Tips collected, net of refunds")
