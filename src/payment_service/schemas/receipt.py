"""Receipt shape (SPEC §5): the payment, its refunds and what the rider paid in the end."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from payment_service.schemas.common import Money
from payment_service.schemas.payment import PaymentRead


class ReceiptRefund(BaseModel):
    refund_id: int
    amount: Money
    reason: str | None
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
