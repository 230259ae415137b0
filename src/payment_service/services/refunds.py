"""Refunds: partial or full, never past the amount.

Everything happens in the request's one transaction: the idempotency key is
claimed, the payment row is locked (`SELECT .. FOR UPDATE`, so concurrent refunds
queue up), the remaining amount is checked, and the refund, the payment update,
the event, the outbox message and the stored answer commit together. The CHECK
`refunded_amount <= amount` is the database's backstop if code ever got it wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.errors import ConflictError, UnprocessableError
from payment_service.jsonutil import dumps
from payment_service.models import Payment, Refund
from payment_service.models.enums import REFUNDABLE_STATUSES, PaymentStatus
from payment_service.observability import REFUND_AMOUNT, REFUNDS, current_request_id
from payment_service.repositories.outbox import OutboxRepository
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.refund import RefundRequest
from payment_service.services.idempotency import Idempotency, StoredResponse, fingerprint
from payment_service.services.payments import PaymentNotFoundError
from payment_service.settings import Settings

log = logging.getLogger(__name__)
CENT = Decimal("0.01")


class PaymentNotRefundableError(ConflictError):
    type = "payment-not-refundable"
    title = "Payment Not Refundable"


class RefundAmountError(UnprocessableError):
    type = "invalid-refund-amount"
    title = "Invalid Refund Amount"


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    status_code: int
    body: bytes
    replayed: bool


def _check_amount(requested: Decimal | None, remaining: Decimal) -> Decimal:
    """The amount to refund: as asked (> 0, cents, within what remains) or all that remains."""
    detail_tail = f"{remaining} remains refundable."
    if requested is None:
        return remaining
    if not requested.is_finite() or requested <= 0:
        raise RefundAmountError(
            f"The refund amount must be greater than 0; {detail_tail}",
            remaining_refundable=remaining,
        )
    if requested != requested.quantize(CENT):
        raise RefundAmountError(
            f"The refund amount must have at most two decimals; {detail_tail}",
            remaining_refundable=remaining,
        )
    if requested > remaining:
        raise RefundAmountError(
            f"Cannot refund {requested}: only {detail_tail}", remaining_refundable=remaining
        )
    return requested.quantize(CENT)


class RefundService:
    def __init__(self, settings: Settings) -> None:
        self.idempotency = Idempotency(settings, "refund")

    async def refund(
        self, session: AsyncSession, payment_id: int, request: RefundRequest, key: str
    ) -> RefundOutcome:
        request_fingerprint = fingerprint(
            {
                "payment_id": payment_id,
                "amount": str(request.amount) if request.amount is not None else None,
                "reason": request.reason,
            }
        )
        claimed = await self.idempotency.try_claim(session, key, request_fingerprint)
        if isinstance(claimed, StoredResponse):
            return RefundOutcome(claimed.status_code, claimed.body, replayed=True)
        if claimed is None:
            raise self.idempotency.in_flight()

        repo = PaymentRepository(session)
        payment = await repo.get_for_update(payment_id)
        if payment is None:
            raise PaymentNotFoundError(payment_id)
        if payment.status not in REFUNDABLE_STATUSES:
            raise PaymentNotRefundableError(
                f"Payment {payment_id} is {payment.status}; only SUCCESS and "
                "PARTIALLY_REFUNDED payments can be refunded.",
                payment_status=payment.status,
            )
        remaining = payment.amount - payment.refunded_amount
        amount = _check_amount(request.amount, remaining)
        if amount <= 0:
            raise PaymentNotRefundableError(f"Payment {payment_id} is fully refunded.")

        previous = payment.status
        refunded = payment.refunded_amount + amount
        new_status = (
            PaymentStatus.REFUNDED
            if refunded == payment.amount
            else PaymentStatus.PARTIALLY_REFUNDED
        ).value
        refund_id, created_at = await repo.record_refund(
            payment_id,
            amount=amount,
            reason=request.reason,
            refunded=refunded,
            status=new_status,
        )
        await repo.append_event(
            payment_id,
            "REFUND",
            from_status=previous,
            to_status=new_status,
            amount=amount,
            data={"refund_id": refund_id, "reason": request.reason},
        )
        await OutboxRepository(session).enqueue(
            "refund",
            payment_id,
            refund_message(
                payment, refund_id, amount, created_at, status=new_status, refunded=refunded
            ),
        )
        body = dumps(
            {
                "refund_id": refund_id,
                "payment_id": payment_id,
                "refund_amount": amount,
                "status": new_status,
                "remaining_refundable": payment.amount - refunded,
                "reason": request.reason,
                "timestamp": created_at,
            }
        )
        await self.idempotency.complete(
            session, claimed, status_code=200, body=body, payment_id=payment_id
        )
        REFUNDS.inc()
        REFUND_AMOUNT.inc(float(amount))
        log.info("refund recorded", extra={"payment_id": payment_id, "refund_id": refund_id})
        return RefundOutcome(200, body, replayed=False)


def refund_message(
    payment: Payment,
    refund_id: int,
    amount: Decimal,
    created_at: datetime,
    *,
    status: str,
    refunded: Decimal,
) -> dict[str, Any]:
    """What the Notification service is told about a refund (with the payment's new state)."""
    return {
        "type": "refund",
        "event": f"payment.{status.lower()}",
        "payment_id": payment.id,
        "refund_id": refund_id,
        "trip_id": payment.trip_id,
        "rider_id": payment.rider_id,
        "driver_id": payment.driver_id,
        "status": status,
        "amount": amount,
        "payment_amount": payment.amount,
        "refunded_amount": refunded,
        "currency": payment.currency,
        "occurred_at": created_at.astimezone(UTC).isoformat(),
        "request_id": current_request_id(),
    }


async def list_refunds(session: AsyncSession, payment_id: int) -> tuple[Payment, Sequence[Refund]]:
    repo = PaymentRepository(session)
    payment = await repo.get(payment_id)
    if payment is None:
        raise PaymentNotFoundError(payment_id)
    return payment, await repo.refunds_of(payment_id)
