"""Receipts: the data of a payment's receipt, issued once so its number never changes.

The receipt number is derived from the payment (`RN-<yyyymmdd of the payment, UTC>-
<payment id zero-padded to 8>`), so it is unique by construction, and it is stored
in `receipts` on first request through `PaymentRepository.get_or_issue_receipt`
(INSERT .. ON CONFLICT DO NOTHING, then SELECT): concurrent first requests agree on
one row and one `issued_at`. The row commits with the request's unit of work.

A receipt exists for every payment, whatever its status: a FAILED or PENDING
payment gets one too, with `charged: false` so nobody reads it as proof of payment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import Payment
from payment_service.models.enums import PaymentStatus
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.payment import payment_dict
from payment_service.services.payments import PaymentNotFoundError

RECEIPT_ID_PREFIX = "RCP-"

# Statuses under which money was actually collected from the rider.
CHARGED_STATUSES = frozenset(
    {PaymentStatus.SUCCESS, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)


def receipt_number_for(payment: Payment) -> str:
    """`RN-20240226-00000008`: the payment's UTC date and its zero-padded id."""
    return f"RN-{payment.created_at.astimezone(UTC):%Y%m%d}-{payment.id:08d}"


async def get_receipt(
    session: AsyncSession, payment_id: int, *, now: datetime | None = None
) -> dict[str, Any]:
    """The receipt of a payment as a dict (Decimals exact, datetimes aware), issuing it once.

    Raises `PaymentNotFoundError` for an unknown payment.
    """
    repo = PaymentRepository(session)
    payment = await repo.get(payment_id)
    if payment is None:
        raise PaymentNotFoundError(payment_id)
    receipt = await repo.get_or_issue_receipt(payment, receipt_number_for(payment))
    refunds = await repo.refunds_of(payment_id)
    return {
        "receipt_id": RECEIPT_ID_PREFIX + payment.reference,
        "receipt_number": receipt.receipt_number,
        **payment_dict(payment),
        "refunds": [
            {
                "refund_id": refund.id,
                "amount": refund.amount,
                "reason": refund.reason,
                "created_at": refund.created_at,
            }
            for refund in refunds
        ],
        "net_amount": payment.amount - payment.refunded_amount,
        "charged": payment.status in CHARGED_STATUSES,
        "issued_at": receipt.issued_at,
        "generated_at": now or datetime.now(UTC),
    }
