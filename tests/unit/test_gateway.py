"""The simulated gateway is deterministic, forceable, and never declines cash."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payment_service.clients.gateway import ChargeAttempt, SimulatedGateway
from payment_service.models.enums import PaymentMethod, PaymentStatus
from payment_service.settings import Settings


def gateway(decline: float = 0.0, pending: float = 0.0) -> SimulatedGateway:
    return SimulatedGateway(
        Settings(_env_file=None, gateway_decline_rate=decline, gateway_pending_rate=pending)  # type: ignore[call-arg]
    )


def request(trip_id: int = 1, method: PaymentMethod = PaymentMethod.CARD, **meta: str):
    return ChargeAttempt(
        payment_id=1,
        idempotency_key="payment-1",
        reference="RHP20260101-ABCDEF",
        trip_id=trip_id,
        method=method,
        amount=Decimal("42.50"),
        currency="INR",
        metadata=meta,
    )


async def test_same_request_same_outcome() -> None:
    """Repeating a request repeats its outcome and gateway reference."""
    gw = gateway(decline=0.3, pending=0.3)
    outcomes = {await gw.charge(request(trip_id=7)) for _ in range(5)}
    assert len(outcomes) == 1


async def test_rates_shape_the_outcomes() -> None:
    """With 30% declines and 30% pending, all three outcomes occur over many trips."""
    gw = gateway(decline=0.3, pending=0.3)
    seen = {(await gw.charge(request(trip_id=i))).status for i in range(200)}
    assert seen == {PaymentStatus.SUCCESS, PaymentStatus.PENDING, PaymentStatus.FAILED}


async def test_zero_rates_always_succeed() -> None:
    """The default rates (0) never decline."""
    gw = gateway()
    for i in range(50):
        assert (await gw.charge(request(trip_id=i))).status is PaymentStatus.SUCCESS


@pytest.mark.parametrize(
    ("forced", "status"),
    [
        ("decline", PaymentStatus.FAILED),
        ("pending", PaymentStatus.PENDING),
        ("success", PaymentStatus.SUCCESS),
    ],
)
async def test_metadata_forces_an_outcome(forced: str, status: PaymentStatus) -> None:
    """metadata simulate=decline|pending|success forces the outcome for tests."""
    result = await gateway(decline=1.0).charge(request(simulate=forced))
    assert result.status is status
    if status is PaymentStatus.FAILED:
        assert result.failure_reason == "DECLINED"


async def test_cash_always_succeeds() -> None:
    """CASH succeeds even when declines are forced or certain."""
    result = await gateway(decline=1.0).charge(
        request(method=PaymentMethod.CASH, simulate="decline")
    )
    assert result.status is PaymentStatus.SUCCESS
