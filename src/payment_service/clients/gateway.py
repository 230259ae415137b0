"""The payment processor behind one interface, and the in-process simulator.

The charge and refund services speak only this interface (`PaymentGateway`); the
Stripe adapter (`clients/stripe_gateway.py`) and the simulator implement it.

Contract every implementation keeps:
- Every mutating call carries the caller's `idempotency_key`, which belongs to one
  payment (or one refund) and never changes across retries, lease take-overs and
  restarts; the same key sent again never moves money twice.
- Transport failures, timeouts and processor 5xx raise `GatewayUnavailableError`
  (the service answers 503 and the payment stays PROCESSING); a refused
  credential raises `GatewayAuthError`. A decline is not an error: it is a result
  with status FAILED.
- `lookup_charge` / `lookup_refund` tell the current state at the processor; the
  reconciler uses them to finish PROCESSING and PENDING rows.

The simulator decides from a hash of (trip, method, amount): the same request
always gets the same outcome. CASH always succeeds. Rates come from
GATEWAY_DECLINE_RATE / GATEWAY_PENDING_RATE. Tests force an outcome with the
charge's metadata: `"simulate": "decline" | "pending" | "success"` (honoured by the
simulator and the sandbox processor only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol

from payment_service.errors import ServiceUnavailableError
from payment_service.models.enums import PaymentMethod, PaymentStatus, RefundStatus
from payment_service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SIMULATE_KEY = "simulate"
FORCED = {
    "decline": PaymentStatus.FAILED,
    "pending": PaymentStatus.PENDING,
    "success": PaymentStatus.SUCCESS,
}


class GatewayUnavailableError(ServiceUnavailableError):
    """The processor could not be reached or did not answer in time (retry later)."""

    type = "gateway-unavailable"
    title = "Payment Processor Unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 2) -> None:
        super().__init__(
            detail or "The payment processor is unavailable; retry with the same key.",
            headers={"Retry-After": str(retry_after)},
        )


class GatewayAuthError(GatewayUnavailableError):
    """The processor refused our credentials: an operator must fix the configuration."""

    type = "gateway-misconfigured"
    title = "Payment Processor Refused Our Credentials"


class InvalidWebhookError(Exception):
    """A webhook whose signature, timestamp or payload does not verify."""


@dataclass(frozen=True, slots=True)
class ChargeAttempt:
    """One payment's request to collect money (its key is the payment's own)."""

    payment_id: int
    idempotency_key: str
    reference: str
    trip_id: int
    method: PaymentMethod
    amount: Decimal
    currency: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The processor's id for this payment once known (e.g. a PaymentIntent id).
    gateway_reference: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: PaymentStatus  # SUCCESS, PENDING or FAILED
    gateway_reference: str | None
    message: str
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RefundAttempt:
    """One refund's request to give money back (its key is the refund's own)."""

    refund_id: int
    payment_id: int
    idempotency_key: str
    payment_gateway_reference: str | None
    amount: Decimal
    currency: str
    reason: str | None = None
    gateway_reference: str | None = None  # the processor's refund id once known


@dataclass(frozen=True, slots=True)
class RefundResult:
    status: RefundStatus  # SUCCEEDED, PROCESSING (still pending at the processor) or FAILED
    gateway_reference: str | None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessorRecord:
    """What the processor holds for one payment: for `payment-service reconcile`."""

    gateway_reference: str
    status: PaymentStatus
    captured: Decimal
    refunded: Decimal
    captures: int = 1  # how many times money was captured for this payment


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """A verified processor event, reduced to what the state machine needs."""

    event_id: str
    kind: Literal["payment", "refund"]
    gateway_reference: str
    payment_id: int | None  # ours, from the object's metadata
    refund_id: int | None
    payment_status: PaymentStatus | None = None  # kind == "payment"
    refund_status: RefundStatus | None = None  # kind == "refund"
    failure_reason: str | None = None


class PaymentGateway(Protocol):
    """What a processor integration implements."""

    name: str

    async def charge(self, attempt: ChargeAttempt) -> ChargeResult: ...

    async def lookup_charge(self, attempt: ChargeAttempt) -> ChargeResult:
        """The payment's current state at the processor (it may resend the charge with the
        same idempotency key to learn the processor's id)."""
        ...

    async def refund(self, attempt: RefundAttempt) -> RefundResult: ...

    async def lookup_refund(self, attempt: RefundAttempt) -> RefundResult: ...

    async def processor_record(self, attempt: ChargeAttempt) -> ProcessorRecord | None:
        """Money captured and refunded for this payment; None if the processor has none."""
        ...

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> GatewayEvent | None:
        """Verify and decode; None for event types we ignore, InvalidWebhookError if bad."""
        ...

    async def aclose(self) -> None: ...


class SimulatedGateway:
    """Deterministic stand-in for a card/UPI/wallet processor, for unit tests and the bench."""

    name = "simulator"

    def __init__(self, settings: Settings) -> None:
        self.decline_rate = settings.gateway_decline_rate
        self.pending_rate = settings.gateway_pending_rate

    async def charge(self, attempt: ChargeAttempt) -> ChargeResult:
        digest = hashlib.sha256(
            f"{attempt.trip_id}|{attempt.method.value}|{attempt.amount}".encode()
        ).hexdigest()
        gateway_reference = f"SIM-{digest[:16].upper()}"
        status = self._decide(attempt, int(digest[16:24], 16) / 0xFFFFFFFF)
        if status is PaymentStatus.SUCCESS:
            return ChargeResult(status, gateway_reference, "Payment successful")
        if status is PaymentStatus.PENDING:
            return ChargeResult(
                status, gateway_reference, "Payment is pending confirmation by the provider"
            )
        return ChargeResult(
            status,
            gateway_reference,
            "Payment declined by the provider",
            failure_reason="DECLINED",
        )

    async def lookup_charge(self, attempt: ChargeAttempt) -> ChargeResult:
        return await self.charge(attempt)

    async def refund(self, attempt: RefundAttempt) -> RefundResult:
        digest = hashlib.sha256(attempt.idempotency_key.encode()).hexdigest()
        return RefundResult(RefundStatus.SUCCEEDED, f"SIMR-{digest[:16].upper()}")

    async def lookup_refund(self, attempt: RefundAttempt) -> RefundResult:
        return await self.refund(attempt)

    async def processor_record(self, attempt: ChargeAttempt) -> ProcessorRecord | None:
        return None  # the simulator keeps no ledger

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> GatewayEvent | None:
        raise InvalidWebhookError("the simulator sends no webhooks")

    async def aclose(self) -> None:
        return None

    def _decide(self, attempt: ChargeAttempt, draw: float) -> PaymentStatus:
        if attempt.method is PaymentMethod.CASH:
            return PaymentStatus.SUCCESS
        forced = attempt.metadata.get(SIMULATE_KEY, "").lower()
        if forced in FORCED:
            return FORCED[forced]
        if draw < self.decline_rate:
            return PaymentStatus.FAILED
        if draw < self.decline_rate + self.pending_rate:
            return PaymentStatus.PENDING
        return PaymentStatus.SUCCESS


def build_gateway(
    settings: Settings, *, tracer_provider: TracerProvider | None = None
) -> PaymentGateway:
    """The configured processor integration (the lifespan owns and closes it); its calls
    are traced with `tracer_provider` when one is given."""
    if settings.gateway == "simulator":
        return SimulatedGateway(settings)
    from payment_service.clients.stripe_gateway import StripeGateway

    return StripeGateway(settings, tracer_provider=tracer_provider)
