"""Payment gateway interface and the shipped deterministic simulator.

The simulator decides from a hash of (trip, method, amount): the same request
always gets the same outcome. CASH always succeeds. Rates come from
GATEWAY_DECLINE_RATE / GATEWAY_PENDING_RATE. Tests force an outcome with the
charge's metadata: `"simulate": "decline" | "pending" | "success"`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from payment_service.models.enums import PaymentMethod, PaymentStatus
from payment_service.settings import Settings

SIMULATE_KEY = "simulate"
FORCED = {
    "decline": PaymentStatus.FAILED,
    "pending": PaymentStatus.PENDING,
    "success": PaymentStatus.SUCCESS,
}


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    reference: str
    trip_id: int
    method: PaymentMethod
    amount: Decimal
    currency: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewayResult:
    status: PaymentStatus
    gateway_reference: str
    message: str
    failure_reason: str | None = None


class PaymentGateway(Protocol):
    """What a real processor integration implements."""

    async def authorize(self, request: GatewayRequest) -> GatewayResult: ...


class SimulatedGateway:
    """Deterministic stand-in for a card/UPI/wallet processor."""

    def __init__(self, settings: Settings) -> None:
        self.decline_rate = settings.gateway_decline_rate
        self.pending_rate = settings.gateway_pending_rate

    async def authorize(self, request: GatewayRequest) -> GatewayResult:
        digest = hashlib.sha256(
            f"{request.trip_id}|{request.method.value}|{request.amount}".encode()
        ).hexdigest()
        gateway_reference = f"SIM-{digest[:16].upper()}"
        status = self._decide(request, int(digest[16:24], 16) / 0xFFFFFFFF)
        if status is PaymentStatus.SUCCESS:
            return GatewayResult(status, gateway_reference, "Payment successful")
        if status is PaymentStatus.PENDING:
            return GatewayResult(
                status, gateway_reference, "Payment is pending confirmation by the provider"
            )
        return GatewayResult(
            status,
            gateway_reference,
            "Payment declined by the provider",
            failure_reason="DECLINED",
        )

    def _decide(self, request: GatewayRequest, draw: float) -> PaymentStatus:
        if request.method is PaymentMethod.CASH:
            return PaymentStatus.SUCCESS
        forced = request.metadata.get(SIMULATE_KEY, "").lower()
        if forced in FORCED:
            return FORCED[forced]
        if draw < self.decline_rate:
            return PaymentStatus.FAILED
        if draw < self.decline_rate + self.pending_rate:
            return PaymentStatus.PENDING
        return PaymentStatus.SUCCESS
