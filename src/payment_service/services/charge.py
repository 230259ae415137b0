"""Charging a trip: where a charge is decided and where its transactions begin and end.

Each transaction is one statement, sent without BEGIN/COMMIT (one round trip each):

    tx 1  claim the key unless the trip is paid     (`repositories/charge_start.claim_charge`;
                                                     a finished key replays here, touching
                                                     neither the Trip service nor the processor)
          Trip service                              (no transaction open)
    tx 2  INSERT payment PROCESSING + event + bind the key   (`charge_start.start_charge`)
          processor, with the payment's own gateway idempotency key   (no transaction)
    tx 3  guarded move PROCESSING -> SUCCESS | PENDING | FAILED + event + journal + outbox
          + answer                                  (`services/transitions.finish_held_charge`)

Cases off that path use ordinary transactions: a key in flight or to resume
(`Idempotency.claim`), a payment another finisher moved first (`finish_charge`).

The payment exists before money moves, so money the processor took is never lost:
after a crash, a database outage or a processor timeout the payment stays PROCESSING
and the key stays bound to it. A retry with the same key resumes that payment (no
second Trip lookup, the same gateway key, so no second capture), and the reconciler
(`worker/reconciler.py`) finishes it if nobody retries. The database has the last
word on "one live payment per trip" (`uq_payments_live_trip`, PROCESSING counts as
live): the insert uses ON CONFLICT against that index, so concurrent charges for one
trip with different keys produce exactly one payment and 409s naming it.
"""

from __future__ import annotations

import logging
import secrets
import string
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.auth.caller import current_actor
from payment_service.clients.gateway import (
    ChargeAttempt,
    ChargeResult,
    GatewayUnavailableError,
    PaymentGateway,
)
from payment_service.clients.trip import Trip, TripClient
from payment_service.db import SessionFactory, raw_statements
from payment_service.errors import ConflictError, UnprocessableError
from payment_service.models import Payment
from payment_service.models.enums import PaymentKind, PaymentMethod, PaymentStatus
from payment_service.observability import TRIP_SERVICE_REQUESTS
from payment_service.repositories.charge_start import claim_charge, start_charge
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.payment import ChargeRequest
from payment_service.services.fares import CENT, FareUnavailableError, compute_fare
from payment_service.services.idempotency import (
    DEFAULT_CLIENT,
    Claim,
    Idempotency,
    StoredResponse,
    fingerprint,
)
from payment_service.services.transitions import (
    Answer,
    charge_answer,
    finish_charge,
    finish_held_charge,
)
from payment_service.settings import Settings

log = logging.getLogger(__name__)

_REFERENCE_ALPHABET = string.ascii_uppercase + string.digits


class TripNotFoundError(UnprocessableError):
    type = "trip-not-found"
    title = "Trip Not Found"


class TripNotCompletedError(UnprocessableError):
    type = "trip-not-completed"
    title = "Trip Not Completed"


class TripMismatchError(UnprocessableError):
    type = "trip-mismatch"
    title = "Rider Or Driver Does Not Match The Trip"


class TripAlreadyPaidError(ConflictError):
    type = "trip-already-paid"
    title = "Trip Already Paid"

    def __init__(self, trip_id: int, payment_id: int, status: str) -> None:
        super().__init__(
            f"Trip {trip_id} already has payment {payment_id} ({status}).",
            trip_id=trip_id,
            payment_id=payment_id,
            payment_status=status,
        )


def new_reference(now: datetime | None = None) -> str:
    """`RHP<yyyymmdd>-<6 chars>`, the seed's reference format."""
    now = now or datetime.now(UTC)
    suffix = "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(6))
    return f"RHP{now:%Y%m%d}-{suffix}"


def new_gateway_key() -> str:
    """The processor's idempotency key for one payment, stored on its row (never re-made)."""
    return f"payment-{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    status_code: int
    body: bytes
    replayed: bool


class ChargeService:
    """Decides and records charges; one instance per request."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: SessionFactory,
        trip_client: TripClient,
        gateway: PaymentGateway,
        client_id: str = DEFAULT_CLIENT,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.trip_client = trip_client
        self.gateway = gateway
        self.idempotency = Idempotency(settings, "charge", client_id)

    async def charge(self, request: ChargeRequest, key: str) -> ChargeOutcome:
        request_fingerprint = fingerprint(
            {
                "trip_id": request.trip_id,
                "method": request.method.value,
                "rider_id": request.rider_id,
                "driver_id": request.driver_id,
                "metadata": request.metadata or None,
            }
        )
        claimed = await self._claim(request.trip_id, key, request_fingerprint)
        if isinstance(claimed, StoredResponse):
            return ChargeOutcome(claimed.status_code, claimed.body, replayed=True)
        if claimed.payment_id is not None:
            return await self._resume(claimed, claimed.payment_id, source="retry")
        try:
            payment = await self._create_payment(request, claimed)
        except BaseException:
            # Nothing was recorded (tx 2 wrote nothing or never ran): the key may be reused.
            await self.idempotency.release(self.session_factory, claimed)
            raise
        # From here on the key stays bound to the payment, whatever happens.
        return await self._resume(claimed, payment.id, source="request", payment=payment)

    async def _claim(
        self, trip_id: int, key: str, request_fingerprint: str
    ) -> Claim | StoredResponse:
        """tx 1. One statement settles the usual cases: a fresh key for an unpaid
        trip (claimed), a finished key (its answer), a paid trip with a new key (409).
        The rest (a twin in flight, an expired lease, a bound key to resume) takes
        `Idempotency.claim`, which waits and takes over as it always did."""
        idempotency = self.idempotency
        token = str(uuid.uuid4())
        first = await claim_charge(
            raw_statements(self.session_factory),
            trip_id=trip_id,
            operation=idempotency.operation,
            client_id=idempotency.client_id,
            key=key,
            fingerprint=request_fingerprint,
            token=token,
            lease=idempotency.lease,
            ttl=idempotency.ttl,
        )
        if first.claimed_id is not None:
            return Claim(first.claimed_id, token)
        stored = idempotency.replay_of(first.existing, request_fingerprint)
        if stored is not None:
            return stored
        if first.live is not None and first.existing is None:
            raise TripAlreadyPaidError(trip_id, *first.live)
        return await idempotency.claim(
            self.session_factory,
            key,
            request_fingerprint,
            precheck=lambda session: _ensure_unpaid(session, trip_id),
        )

    async def _create_payment(self, request: ChargeRequest, claim: Claim) -> Payment:
        """Trip lookup (no transaction), then tx 2: the PROCESSING row, bound to the key."""
        trip = await self._completed_trip(request)
        if trip.status == "CANCELLED":  # _completed_trip let it through: it has a fee
            assert trip.cancellation_fee is not None
            amount, kind = trip.cancellation_fee.quantize(CENT), PaymentKind.CANCELLATION_FEE
        else:
            try:
                amount = compute_fare(
                    trip, base_fare=self.settings.base_fare, rate_per_km=self.settings.rate_per_km
                )
            except FareUnavailableError as exc:
                raise UnprocessableError(f"Cannot price the trip: {exc}.") from None
            kind = PaymentKind.FARE
        # One statement: the payment, its CHARGE_STARTED event, the key bound to it.
        started = await start_charge(
            raw_statements(self.session_factory),
            key_id=claim.key_id,
            token=claim.token,
            event_type="CHARGE_STARTED",
            event_data={"gateway": self.gateway.name, "kind": kind.value},
            actor=current_actor(),
            amount=amount,
            metadata=request.metadata or {},
            trip_id=trip.trip_id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id,
            currency=self.settings.currency,
            method=request.method.value,
            status=PaymentStatus.PROCESSING.value,
            reference=new_reference(),
            gateway_idempotency_key=new_gateway_key(),
            kind=kind.value,
            commission_rate=self.settings.platform_commission_rate,
            trip_snapshot=trip.snapshot(),
        )
        if started is None:  # nothing written: a live twin won the race, or we lost the lease
            async with self.session_factory() as session:
                live = await PaymentRepository(session).find_live_for_trip(trip.trip_id)
            if live is None:
                raise self.idempotency.lease_lost()
            raise TripAlreadyPaidError(trip.trip_id, *live)
        assert started.bound  # `lk` held the key's row from the check to the binding
        return started.payment

    async def _resume(
        self, claim: Claim, payment_id: int, *, source: str, payment: Payment | None = None
    ) -> ChargeOutcome:
        """Ask the processor (same gateway key as every earlier attempt) and record it."""
        if payment is None:
            async with self.session_factory() as session:
                payment = await PaymentRepository(session).get(payment_id)
            assert payment is not None  # bound keys reference payments (FK)
        if payment.status == PaymentStatus.PROCESSING.value:
            try:
                result = await ask_processor(self.gateway, payment)
            except GatewayUnavailableError:
                await self.idempotency.end_lease(self.session_factory, claim)
                raise
            held = await finish_held_charge(
                raw_statements(self.session_factory), payment, result, source=source
            )
            if held is not None:
                payment, answer = held
            else:  # a concurrent finisher (reconciler, webhook) moved it first
                async with self.session_factory() as session, session.begin():
                    payment, moved = await finish_charge(session, payment.id, result, source=source)
                    answer = (
                        charge_answer(payment, result.message)
                        if moved  # PENDING -> our outcome; finish_charge stored it
                        else await self._answer_recorded(session, claim, payment)
                    )
        else:  # finished meanwhile (reconciler, webhook): answer with what it recorded
            async with self.session_factory() as session, session.begin():
                answer = await self._answer_recorded(session, claim, payment)
        return ChargeOutcome(answer.status_code, answer.body, replayed=False)

    async def _answer_recorded(
        self, session: AsyncSession, claim: Claim, payment: Payment
    ) -> Answer:
        """The answer for a payment another finisher moved: the one it stored on our key,
        so the caller and every replay see the same bytes; else rendered and stored now."""
        return await self.idempotency.answer_recorded(
            session, claim, lambda: charge_answer(payment), payment_id=payment.id
        )

    async def _completed_trip(self, request: ChargeRequest) -> Trip:
        trip = await self.trip_client.get_trip(request.trip_id)
        if trip is None:
            raise TripNotFoundError(f"Trip {request.trip_id} not found by the Trip service.")
        chargeable_fee = (
            trip.status == "CANCELLED"
            and trip.cancellation_fee is not None
            and trip.cancellation_fee > 0
        )
        if trip.status != "COMPLETED" and not chargeable_fee:
            TRIP_SERVICE_REQUESTS.labels(outcome="not_completed").inc()
            raise TripNotCompletedError(
                f"Trip {trip.trip_id} is not completed (status {trip.status}); not chargeable."
            )
        for field in ("rider_id", "driver_id"):
            given, actual = getattr(request, field), getattr(trip, field)
            if given is not None and actual is not None and given != actual:
                raise TripMismatchError(
                    f"{field} {given} does not match trip {trip.trip_id} ({field} {actual}).",
                    errors=[{"field": field, "message": f"trip has {actual}"}],
                )
        # Ids the trip lacks are taken from the request.
        return replace(
            trip,
            rider_id=trip.rider_id if trip.rider_id is not None else request.rider_id,
            driver_id=trip.driver_id if trip.driver_id is not None else request.driver_id,
        )


async def _ensure_unpaid(session: AsyncSession, trip_id: int) -> None:
    """Refuse early (before the Trip service and the gateway) when the trip is already paid.

    Runs in the transaction that claims the idempotency key; the partial unique index
    still decides races between concurrent charges at insert time.
    """
    live = await PaymentRepository(session).find_live_for_trip(trip_id)
    if live is not None:
        raise TripAlreadyPaidError(trip_id, *live)


async def ask_processor(
    gateway: PaymentGateway, payment: Payment, *, lookup: bool = False
) -> ChargeResult:
    """The processor's answer for a PROCESSING/PENDING payment: the request and a same-key
    retry charge (idempotently), the reconciler looks up. Cash never goes to a processor:
    the driver collected it."""
    if payment.method == PaymentMethod.CASH.value:
        return ChargeResult(PaymentStatus.SUCCESS, None, "Cash payment recorded")
    attempt = charge_attempt(payment)
    return await (gateway.lookup_charge(attempt) if lookup else gateway.charge(attempt))


def charge_attempt(payment: Payment) -> ChargeAttempt:
    """What the processor is asked for a payment: the same every time, from the stored row."""
    assert payment.gateway_idempotency_key is not None
    return ChargeAttempt(
        payment_id=payment.id,
        idempotency_key=payment.gateway_idempotency_key,
        reference=payment.reference,
        trip_id=payment.trip_id,
        method=PaymentMethod(payment.method),
        amount=payment.amount,
        currency=payment.currency,
        metadata=payment.metadata_ or {},
        gateway_reference=payment.gateway_reference,
    )
