"""Charging a trip: where a charge is decided and where its transactions begin and end.

    claim key + "already paid?" (tx 1) -> Trip service (no transaction)
      -> gateway (no transaction) -> record payment + event + outbox + answer (tx 2)

No transaction is held across the Trip or gateway call. The database has the last
word on "one live payment per trip" (`uq_payments_live_trip`): the insert uses
ON CONFLICT against that partial unique index, so concurrent charges for one trip
with different keys produce exactly one live payment and 409s naming it.
"""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.clients.gateway import ChargeAttempt, PaymentGateway
from payment_service.clients.trip import Trip, TripClient
from payment_service.db import SessionFactory
from payment_service.errors import ConflictError, UnprocessableError
from payment_service.jsonutil import dumps
from payment_service.models import Payment
from payment_service.models.enums import PaymentStatus
from payment_service.observability import (
    PAYMENT_AMOUNT,
    PAYMENTS,
    TRIP_SERVICE_REQUESTS,
    current_request_id,
)
from payment_service.repositories.outbox import OutboxRepository
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.payment import ChargeRequest, payment_dict
from payment_service.services.fares import FareUnavailableError, compute_fare
from payment_service.services.idempotency import (
    Claim,
    Idempotency,
    StoredResponse,
    fingerprint,
)
from payment_service.settings import Settings

log = logging.getLogger(__name__)

STATUS_CODES = {PaymentStatus.SUCCESS: 201, PaymentStatus.PENDING: 202, PaymentStatus.FAILED: 202}
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
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.trip_client = trip_client
        self.gateway = gateway
        self.idempotency = Idempotency(settings, "charge")

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
        claimed = await self.idempotency.claim(
            self.session_factory,
            key,
            request_fingerprint,
            precheck=lambda session: _ensure_unpaid(session, request.trip_id),
        )
        if isinstance(claimed, StoredResponse):
            return ChargeOutcome(claimed.status_code, claimed.body, replayed=True)
        try:
            return await self._charge_claimed(request, claimed)
        except BaseException:
            # Nothing was recorded (tx 2 rolled back or never ran): the key may be reused.
            await self.idempotency.release(self.session_factory, claimed)
            raise

    async def _charge_claimed(self, request: ChargeRequest, claim: Claim) -> ChargeOutcome:
        trip = await self._completed_trip(request)
        try:
            amount = compute_fare(
                trip, base_fare=self.settings.base_fare, rate_per_km=self.settings.rate_per_km
            )
        except FareUnavailableError as exc:
            raise UnprocessableError(f"Cannot price the trip: {exc}.") from None

        reference = new_reference()
        result = await self.gateway.charge(
            ChargeAttempt(
                payment_id=0,
                idempotency_key=reference,
                reference=reference,
                trip_id=trip.trip_id,
                method=request.method,
                amount=amount,
                currency=self.settings.currency,
                metadata=request.metadata or {},
            )
        )
        async with self.session_factory() as session, session.begin():
            payment = await self._insert_payment(
                session,
                trip,
                method=request.method.value,
                amount=amount,
                status=result.status.value,
                reference=reference,
                gateway_reference=result.gateway_reference,
                failure_reason=result.failure_reason,
                metadata_=request.metadata or {},
            )
            body_dict = payment_dict(payment) | {"message": result.message}
            body = dumps(body_dict)
            status_code = STATUS_CODES[result.status]
            await self._record_side_effects(session, payment, result.message)
            await self.idempotency.complete(
                session, claim, status_code=status_code, body=body, payment_id=payment.id
            )
        PAYMENTS.labels(method=payment.method, status=payment.status).inc()
        PAYMENT_AMOUNT.observe(float(amount))
        log.info(
            "charge recorded",
            extra={"payment_id": payment.id, "trip_id": trip.trip_id, "status": payment.status},
        )
        return ChargeOutcome(status_code, body, replayed=False)

    async def _completed_trip(self, request: ChargeRequest) -> Trip:
        trip = await self.trip_client.get_trip(request.trip_id)
        if trip is None:
            raise TripNotFoundError(f"Trip {request.trip_id} not found by the Trip service.")
        if trip.status != "COMPLETED":
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

    async def _insert_payment(self, session: AsyncSession, trip: Trip, **values: Any) -> Payment:
        """The payment, unless another live payment for the trip won the race (409)."""
        repo = PaymentRepository(session)
        payment = await repo.insert_unless_trip_paid(
            trip_id=trip.trip_id,
            rider_id=trip.rider_id,
            driver_id=trip.driver_id,
            currency=self.settings.currency,
            **values,
        )
        if payment is None:
            live = await repo.find_live_for_trip(trip.trip_id)
            payment_id, live_status = live if live else (0, "unknown")
            raise TripAlreadyPaidError(trip.trip_id, payment_id, live_status)
        return payment

    async def _record_side_effects(
        self, session: AsyncSession, payment: Payment, message: str
    ) -> None:
        """The event and the notification, in the payment's own transaction."""
        await PaymentRepository(session).append_event(
            payment.id,
            f"CHARGE_{payment.status}",
            from_status=None,
            to_status=payment.status,
            amount=payment.amount,
            data={"message": message, "gateway_reference": payment.gateway_reference},
        )
        await OutboxRepository(session).enqueue("payment", payment.id, payment_message(payment))


def payment_message(payment: Payment) -> dict[str, Any]:
    """What the Notification service is told about a charge."""
    return {
        "type": "payment",
        "event": f"payment.{payment.status.lower()}",
        "payment_id": payment.id,
        "trip_id": payment.trip_id,
        "rider_id": payment.rider_id,
        "driver_id": payment.driver_id,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "method": payment.method,
        "reference": payment.reference,
        "occurred_at": payment.created_at.isoformat(),
        "request_id": current_request_id(),
    }


async def _ensure_unpaid(session: AsyncSession, trip_id: int) -> None:
    """Refuse early (before the Trip service and the gateway) when the trip is already paid.

    Runs in the transaction that claims the idempotency key; the partial unique index
    still decides races between concurrent charges at insert time.
    """
    live = await PaymentRepository(session).find_live_for_trip(trip_id)
    if live is not None:
        raise TripAlreadyPaidError(trip_id, *live)
