"""Tips: a further payment on a paid trip, all of it the driver's (no commission).

A tip is a payment of kind TIP whose `parent_payment_id` is the trip's FARE payment.
It goes through the same steps as a charge (`services/charge.py`):

    tx 1  claim the key (operation "tip": a finished key replays, another body is a 422,
          one still in flight a 409)
    tx 2  lock the fare payment, check it may be tipped (SUCCESS or PARTIALLY_REFUNDED,
          within TIP_MAX_DAYS, tips so far + this one <= TIP_MAX_AMOUNT), INSERT the
          tip PROCESSING, bind the key to it
          processor, with the tip's own gateway idempotency key (no transaction)
    tx 3  `transitions.finish_charge`: SUCCESS | PENDING | FAILED + event + outbox message
          (type "tip") + the ledger journal (the driver gets it all) + the stored answer

The fare's row lock serialises tips of one fare, so concurrent tips with different keys
never pass the limit together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from payment_service.clients.gateway import PaymentGateway
from payment_service.db import SessionFactory
from payment_service.errors import ConflictError, UnprocessableError
from payment_service.models import Payment
from payment_service.models.enums import PaymentKind, PaymentStatus
from payment_service.repositories.payment import PaymentRepository
from payment_service.services.charge import (
    ChargeOutcome,
    ChargeService,
    new_gateway_key,
    new_reference,
)
from payment_service.services.idempotency import (
    DEFAULT_CLIENT,
    Claim,
    Idempotency,
    StoredResponse,
    fingerprint,
)
from payment_service.services.payments import PaymentNotFoundError
from payment_service.settings import Settings

CENT = Decimal("0.01")
TIPPABLE_STATUSES = (PaymentStatus.SUCCESS.value, PaymentStatus.PARTIALLY_REFUNDED.value)


class PaymentNotTippableError(ConflictError):
    """Only a trip's fare payment that succeeded (SUCCESS or PARTIALLY_REFUNDED) takes tips."""

    type = "payment-not-tippable"
    title = "Payment Cannot Take A Tip"


class TipNotAllowedError(UnprocessableError):
    """The tip is past TIP_MAX_DAYS after the fare, or would take the fare's tips past
    TIP_MAX_AMOUNT."""

    type = "tip-not-allowed"
    title = "Tip Not Allowed"


class ExtraAmountError(UnprocessableError):
    """A tip or a new fare must be a positive amount with at most two decimals."""

    type = "invalid-amount"
    title = "Invalid Amount"


def check_amount(value: Decimal, field: str) -> Decimal:
    """> 0 with at most two decimals (checked before any key is claimed: nothing stored)."""
    if not value.is_finite() or value <= 0 or value != value.quantize(CENT):
        raise ExtraAmountError(
            f"{field} must be greater than 0 with at most two decimals.",
            errors=[{"field": field, "message": "> 0, at most 2 decimals"}],
        )
    return value.quantize(CENT)


class ExtraChargeService(ChargeService):
    """A further payment on a trip (tip, adjustment): claimed, created, then resumed like a
    charge (the processor step and `finish_charge` are the charge's own)."""

    operation = "charge"

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: SessionFactory,
        gateway: PaymentGateway,
        client_id: str = DEFAULT_CLIENT,
    ) -> None:
        super().__init__(
            settings=settings,
            session_factory=session_factory,
            trip_client=None,  # type: ignore[arg-type]  # a further payment needs no Trip call
            gateway=gateway,
            client_id=client_id,
        )
        self.idempotency = Idempotency(settings, self.operation, client_id)

    async def _run(
        self,
        key: str,
        request_fingerprint: str,
        create: Callable[[Claim], Awaitable[Payment]],
    ) -> ChargeOutcome:
        claimed = await self.idempotency.claim(self.session_factory, key, request_fingerprint)
        if isinstance(claimed, StoredResponse):
            return ChargeOutcome(claimed.status_code, claimed.body, replayed=True)
        if claimed.payment_id is not None:
            return await self._resume(claimed, claimed.payment_id, source="retry")
        try:
            payment = await create(claimed)
        except BaseException:
            await self.idempotency.release(self.session_factory, claimed)
            raise
        return await self._resume(claimed, payment.id, source="request", payment=payment)


async def insert_child_payment(
    repo: PaymentRepository,
    parent: Payment,
    *,
    kind: PaymentKind,
    amount: Decimal,
    commission_rate: Decimal,
    metadata: dict[str, str] | None = None,
) -> Payment:
    """A PROCESSING payment of `kind` on the parent's trip, for the same rider and driver."""
    statement = (
        insert(Payment)
        .values(
            trip_id=parent.trip_id,
            rider_id=parent.rider_id,
            driver_id=parent.driver_id,
            amount=amount,
            currency=parent.currency,
            method=parent.method,
            status=PaymentStatus.PROCESSING.value,
            reference=new_reference(),
            gateway_idempotency_key=new_gateway_key(),
            kind=kind.value,
            parent_payment_id=parent.id,
            commission_rate=commission_rate,
            trip_snapshot=parent.trip_snapshot,
            metadata_=metadata or {},
        )
        .returning(Payment)
    )
    return (await repo.session.execute(statement)).scalar_one()


async def lock_paid_fare(
    repo: PaymentRepository,
    payment_id: int,
    error: type[ConflictError],
    what: str,
) -> Payment:
    """The fare payment, row-locked, that a tip or an adjustment hangs off (404, else 409
    naming `what` unless it is a FARE in SUCCESS or PARTIALLY_REFUNDED)."""
    fare = await repo.get_for_update(payment_id)
    if fare is None:
        raise PaymentNotFoundError(payment_id)
    if fare.kind != PaymentKind.FARE.value or fare.status not in TIPPABLE_STATUSES:
        raise error(
            f"Payment {payment_id} is a {fare.kind} in {fare.status}; only a fare "
            f"payment in SUCCESS or PARTIALLY_REFUNDED {what}.",
            payment_status=fare.status,
        )
    return fare


class TipService(ExtraChargeService):
    operation = "tip"

    async def tip(self, payment_id: int, amount: Decimal, key: str) -> ChargeOutcome:
        amount = check_amount(amount, "amount")
        request_fingerprint = fingerprint({"payment_id": payment_id, "amount": str(amount)})

        async def create(claim: Claim) -> Payment:
            return await self._create_tip(payment_id, amount, claim)

        return await self._run(key, request_fingerprint, create)

    async def _create_tip(self, payment_id: int, amount: Decimal, claim: Claim) -> Payment:
        settings = self.settings
        async with self.session_factory() as session, session.begin():
            repo = PaymentRepository(session)
            fare = await lock_paid_fare(repo, payment_id, PaymentNotTippableError, "takes tips")
            if datetime.now(UTC) - fare.created_at > timedelta(days=settings.tip_max_days):
                raise TipNotAllowedError(
                    f"Payment {payment_id} is older than {settings.tip_max_days} days; "
                    "it no longer takes tips."
                )
            tipped = await session.scalar(
                select(func.coalesce(func.sum(Payment.amount), 0)).where(
                    Payment.parent_payment_id == payment_id,
                    Payment.kind == PaymentKind.TIP.value,
                    Payment.status != PaymentStatus.FAILED.value,
                )
            )
            allowed = settings.tip_max_amount - Decimal(tipped or 0)
            if amount > allowed:
                raise TipNotAllowedError(
                    f"Tips on payment {payment_id} are limited to {settings.tip_max_amount} "
                    f"in all; {max(allowed, Decimal('0.00'))} remains.",
                    remaining_tip=max(allowed, Decimal("0.00")),
                )
            tip = await insert_child_payment(
                repo, fare, kind=PaymentKind.TIP, amount=amount, commission_rate=Decimal("0")
            )
            await repo.append_event(
                tip.id,
                "TIP_STARTED",
                from_status=None,
                to_status=tip.status,
                amount=amount,
                data={"gateway": self.gateway.name, "parent_payment_id": payment_id},
            )
            await self.idempotency.bind(session, claim, payment_id=tip.id)
        return tip
