"""Refunds: partial or full, through the processor, never past the amount.

    tx 1  claim the key (a finished key replays; a key bound to a refund resumes it)
    tx 2  lock the payment (`SELECT .. FOR UPDATE`, so concurrent refunds queue), check
          what remains (refunds still in flight at the processor count as spent),
          INSERT the refund PROCESSING and reserve its amount, bind the key to it
          processor, with the refund's own gateway idempotency key (no transaction)
    tx 3  guarded move PROCESSING -> SUCCEEDED | FAILED (`services/transitions.py`): the
          reservation becomes `refunded_amount`, or goes back to what remains

The database is the backstop: `ck_payments_refunds_in_flight_within_amount` keeps
refunded + reserved <= amount, and the deferred triggers of migrations 0003/0005 tie
both sums to the refund rows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.clients.gateway import (
    GatewayUnavailableError,
    PaymentGateway,
    RefundAttempt,
    RefundResult,
)
from payment_service.db import SessionFactory
from payment_service.errors import ConflictError, UnprocessableError
from payment_service.models import Payment, Refund
from payment_service.models.enums import REFUNDABLE_STATUSES, RefundStatus
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.refund import RefundRequest
from payment_service.services.idempotency import (
    DEFAULT_CLIENT,
    Claim,
    Idempotency,
    StoredResponse,
    fingerprint,
)
from payment_service.services.payments import PaymentNotFoundError
from payment_service.services.transitions import (
    Answer,
    finish_refund,
    refund_answer,
    remaining_refundable,
)
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
    """Decides and records refunds; one instance per request."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: SessionFactory,
        gateway: PaymentGateway,
        client_id: str = DEFAULT_CLIENT,
    ) -> None:
        self.session_factory = session_factory
        self.gateway = gateway
        self.idempotency = Idempotency(settings, "refund", client_id)

    async def refund(self, payment_id: int, request: RefundRequest, key: str) -> RefundOutcome:
        request_fingerprint = fingerprint(
            {
                "payment_id": payment_id,
                "amount": str(request.amount) if request.amount is not None else None,
                "reason": request.reason,
            }
        )
        claimed = await self.idempotency.claim(self.session_factory, key, request_fingerprint)
        if isinstance(claimed, StoredResponse):
            return RefundOutcome(claimed.status_code, claimed.body, replayed=True)
        if claimed.refund_id is not None:
            return await self._resume(claimed, claimed.refund_id, source="retry")
        try:
            payment, refund = await self._reserve(payment_id, request, claimed)
        except BaseException:
            # Nothing was recorded (tx 2 rolled back): the key may be reused.
            await self.idempotency.release(self.session_factory, claimed)
            raise
        # From here on the key stays bound to the refund, whatever happens.
        return await self._resume(claimed, refund.id, source="request", loaded=(payment, refund))

    async def _reserve(
        self, payment_id: int, request: RefundRequest, claim: Claim
    ) -> tuple[Payment, Refund]:
        """tx 2: the refund row PROCESSING, its amount set aside, the key bound to it."""
        async with self.session_factory() as session, session.begin():
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
            remaining = remaining_refundable(payment)
            if remaining <= 0:
                detail = (
                    f"Payment {payment_id} is fully refunded."
                    if payment.refund_reserved == 0
                    else f"Payment {payment_id} has nothing left to refund: "
                    f"{payment.refund_reserved} is still being refunded."
                )
                raise PaymentNotRefundableError(detail, remaining_refundable=remaining)
            amount = _check_amount(request.amount, remaining)
            refund = await repo.reserve_refund(
                payment_id, amount=amount, reason=request.reason, gateway_key=new_gateway_key()
            )
            await self.idempotency.bind(session, claim, payment_id=payment_id, refund_id=refund.id)
        return payment, refund

    async def _resume(
        self,
        claim: Claim,
        refund_id: int,
        *,
        source: str,
        loaded: tuple[Payment, Refund] | None = None,
    ) -> RefundOutcome:
        """Ask the processor (the refund's own gateway key every time) and record it.

        `loaded`: the rows tx 2 just wrote (a retry reads them again instead).
        """
        if loaded is None:
            async with self.session_factory() as session:
                repo = PaymentRepository(session)
                found = await repo.get_refund(refund_id)
                assert found is not None  # bound keys reference refunds (FK)
                owner = await repo.get(found.payment_id)
                assert owner is not None
            loaded = owner, found
        payment, refund = loaded
        if refund.status == RefundStatus.PROCESSING.value:
            try:
                result = await ask_processor_to_refund(self.gateway, payment, refund)
            except GatewayUnavailableError:
                await self.idempotency.end_lease(self.session_factory, claim)
                raise
            async with self.session_factory() as session, session.begin():
                payment, refund, moved = await finish_refund(
                    session, refund_id, result, source=source
                )
                if moved:  # finish_refund stored this answer on our key
                    answer = refund_answer(payment, refund)
                else:
                    # Still pending at the processor (the answer says so; a webhook or the
                    # reconciler confirms it later), or a webhook finished it while we
                    # waited: the caller gets what that finisher stored on our key.
                    answer = await self._answer_recorded(session, claim, payment, refund)
        else:  # finished meanwhile (reconciler, webhook): answer with what it recorded
            async with self.session_factory() as session, session.begin():
                answer = await self._answer_recorded(session, claim, payment, refund)
        return RefundOutcome(answer.status_code, answer.body, replayed=False)

    async def _answer_recorded(
        self, session: AsyncSession, claim: Claim, payment: Payment, refund: Refund
    ) -> Answer:
        return await self.idempotency.answer_recorded(
            session,
            claim,
            lambda: refund_answer(payment, refund),
            payment_id=payment.id,
            refund_id=refund.id,
        )


async def ask_processor_to_refund(
    gateway: PaymentGateway, payment: Payment, refund: Refund, *, lookup: bool = False
) -> RefundResult:
    """The processor's answer for a PROCESSING refund (the reconciler looks up).

    Cash, or history imported by `seed`: no processor holds this money, so none can give
    it back. The refund is recorded (event `settlement: manual`) and paid out by hand.
    """
    if not held_by_processor(payment):
        return RefundResult(RefundStatus.SUCCEEDED, None)
    attempt = refund_attempt(payment, refund)
    return await (gateway.lookup_refund(attempt) if lookup else gateway.refund(attempt))


def held_by_processor(payment: Payment) -> bool:
    """Whether a processor took this payment's money (so a refund must go through it)."""
    return payment.gateway_idempotency_key is not None and payment.method != "CASH"


def new_gateway_key() -> str:
    """The processor's idempotency key for one refund, stored on its row (never re-made)."""
    return f"refund-{uuid.uuid4()}"


def refund_attempt(payment: Payment, refund: Refund) -> RefundAttempt:
    """What the processor is asked for a refund: the same every time, from the stored rows."""
    assert refund.gateway_idempotency_key is not None
    return RefundAttempt(
        refund_id=refund.id,
        payment_id=payment.id,
        idempotency_key=refund.gateway_idempotency_key,
        payment_gateway_reference=payment.gateway_reference,
        amount=refund.amount,
        currency=payment.currency,
        reason=refund.reason,
        gateway_reference=refund.gateway_reference,
    )


async def list_refunds(session: AsyncSession, payment_id: int) -> tuple[Payment, Sequence[Refund]]:
    repo = PaymentRepository(session)
    payment = await repo.get(payment_id)
    if payment is None:
        raise PaymentNotFoundError(payment_id)
    return payment, await repo.refunds_of(payment_id)
