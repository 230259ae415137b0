"""Fare adjustments: a trip's fare corrected after the charge, up or down.

`POST /v1/payments/{fare_id}/adjustments {idempotency_key, new_fare, reason}` (scope
`charge` in both directions: it is a correction of what the trip costs, made by the
system that charges trips; the money it gives back still goes through the refund path).

The current fare is the fare payment's amount, plus upward adjustments (ADJUSTMENT
payments not FAILED), minus downward ones (refunds of kind ADJUSTMENT not FAILED).

- higher: an ADJUSTMENT payment for the difference, linked to the fare, charged like
  a tip (`services/tips.py`), commission at PLATFORM_COMMISSION_RATE; the answer is that
  payment (201/202).
- lower: a refund of the difference on the fare payment (kind ADJUSTMENT) through the
  refund path (`services/refunds.py`): the fare row is locked, and a difference over
  what remains refundable is a 422; the ledger reverses it in the fare's proportions;
  the answer is the refund's (200/202, 422 `refund-declined`).
- equal: a 422, nothing stored.

Each adjustment appends a `FARE_ADJUSTED` event to the fare payment (old fare, new fare,
reason) in the transaction that creates its payment or refund; the receipt shows them.
One idempotency operation ("adjustment") covers both directions: same key and body
replays, another body is a 422, in flight a 409.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.clients.gateway import PaymentGateway
from payment_service.db import SessionFactory
from payment_service.errors import ConflictError, UnprocessableError
from payment_service.models import Payment, Refund
from payment_service.models.enums import PaymentKind, PaymentStatus, RefundStatus
from payment_service.repositories.payment import PaymentRepository
from payment_service.services.charge import ChargeOutcome
from payment_service.services.idempotency import (
    DEFAULT_CLIENT,
    Claim,
    Idempotency,
    StoredResponse,
    fingerprint,
)
from payment_service.services.refunds import RefundService
from payment_service.services.refunds import new_gateway_key as new_refund_key
from payment_service.services.tips import (
    ExtraChargeService,
    check_amount,
    insert_child_payment,
    lock_paid_fare,
)
from payment_service.services.transitions import remaining_refundable
from payment_service.settings import Settings

ADJUSTMENT = "ADJUSTMENT"


class PaymentNotAdjustableError(ConflictError):
    """Only a trip's fare payment in SUCCESS or PARTIALLY_REFUNDED can have its fare changed."""

    type = "payment-not-adjustable"
    title = "Fare Cannot Be Adjusted"


class AdjustmentRefusedError(UnprocessableError):
    """The new fare equals the current one, or lowers it by more than remains refundable."""

    type = "adjustment-refused"
    title = "Adjustment Refused"


async def current_fare(session: AsyncSession, fare: Payment) -> Decimal:
    up = await session.scalar(
        select(func.coalesce(func.sum(Payment.amount), 0)).where(
            Payment.parent_payment_id == fare.id,
            Payment.kind == PaymentKind.ADJUSTMENT.value,
            Payment.status != PaymentStatus.FAILED.value,
        )
    )
    down = await session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.payment_id == fare.id,
            Refund.kind == ADJUSTMENT,
            Refund.status != RefundStatus.FAILED.value,
        )
    )
    return fare.amount + Decimal(up or 0) - Decimal(down or 0)


class AdjustmentService(ExtraChargeService):
    operation = "adjustment"

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: SessionFactory,
        gateway: PaymentGateway,
        client_id: str = DEFAULT_CLIENT,
    ) -> None:
        super().__init__(
            settings=settings, session_factory=session_factory, gateway=gateway, client_id=client_id
        )
        # The refund path, under this operation's keys.
        self.refunds = RefundService(
            settings=settings, session_factory=session_factory, gateway=gateway, client_id=client_id
        )
        self.refunds.idempotency = Idempotency(settings, self.operation, client_id)

    async def adjust(
        self, payment_id: int, new_fare: Decimal, reason: str, key: str
    ) -> ChargeOutcome:
        new_fare = check_amount(new_fare, "new_fare")
        request_fingerprint = fingerprint(
            {"payment_id": payment_id, "new_fare": str(new_fare), "reason": reason}
        )
        claimed = await self.idempotency.claim(self.session_factory, key, request_fingerprint)
        if isinstance(claimed, StoredResponse):
            return ChargeOutcome(claimed.status_code, claimed.body, replayed=True)
        if claimed.refund_id is not None:
            return await self._resume_refund(claimed, claimed.refund_id, "retry")
        if claimed.payment_id is not None:
            return await self._resume(claimed, claimed.payment_id, source="retry")
        try:
            created = await self._create(payment_id, new_fare, reason, claimed)
        except BaseException:
            await self.idempotency.release(self.session_factory, claimed)
            raise
        if isinstance(created, Refund):
            return await self._resume_refund(claimed, created.id, "request")
        return await self._resume(claimed, created.id, source="request", payment=created)

    async def _resume_refund(self, claim: Claim, refund_id: int, source: str) -> ChargeOutcome:
        outcome = await self.refunds._resume(claim, refund_id, source=source)
        return ChargeOutcome(outcome.status_code, outcome.body, replayed=outcome.replayed)

    async def _create(
        self, payment_id: int, new_fare: Decimal, reason: str, claim: Claim
    ) -> Payment | Refund:
        async with self.session_factory() as session, session.begin():
            repo = PaymentRepository(session)
            fare = await lock_paid_fare(
                repo, payment_id, PaymentNotAdjustableError, "can be adjusted"
            )
            old_fare = await current_fare(session, fare)
            if new_fare == old_fare:
                raise AdjustmentRefusedError(
                    f"The fare of payment {payment_id} is already {old_fare}.",
                    current_fare=old_fare,
                )
            created: Payment | Refund
            data: dict[str, object] = {
                "old_fare": str(old_fare),
                "new_fare": str(new_fare),
                "reason": reason,
            }
            if new_fare > old_fare:
                created = await insert_child_payment(
                    repo,
                    fare,
                    kind=PaymentKind.ADJUSTMENT,
                    amount=new_fare - old_fare,
                    commission_rate=fare.commission_rate,
                    metadata={"reason": reason[:500]},
                )
                data["adjustment_payment_id"] = created.id
                await repo.append_event(
                    created.id,
                    "ADJUSTMENT_STARTED",
                    from_status=None,
                    to_status=created.status,
                    amount=created.amount,
                    data={"parent_payment_id": fare.id, "reason": reason},
                )
                bind = {"payment_id": created.id}
            else:
                difference = old_fare - new_fare
                remaining = remaining_refundable(fare)
                if difference > remaining:
                    raise AdjustmentRefusedError(
                        f"Lowering the fare from {old_fare} to {new_fare} gives back "
                        f"{difference}, but only {remaining} remains refundable.",
                        current_fare=old_fare,
                        remaining_refundable=remaining,
                    )
                created = await repo.reserve_refund(
                    fare.id,
                    amount=difference,
                    reason=f"Fare adjustment: {reason}",
                    gateway_key=new_refund_key(),
                    kind=ADJUSTMENT,
                )
                data["refund_id"] = created.id
                bind = {"payment_id": fare.id, "refund_id": created.id}
            await repo.append_event(
                fare.id,
                "FARE_ADJUSTED",
                from_status=fare.status,
                to_status=fare.status,
                amount=new_fare,
                data=data,
            )
            await self.idempotency.bind(session, claim, **bind)
        return created
