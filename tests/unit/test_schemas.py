"""The hand-built response dicts match the documented response models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from payment_service.models import Payment
from payment_service.schemas.payment import ChargeResponse, PaymentRead, payment_dict


def make_payment() -> Payment:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Payment(
        id=7,
        trip_id=1001,
        rider_id=3,
        driver_id=4,
        amount=Decimal("99.01"),
        currency="INR",
        method="CARD",
        status="SUCCESS",
        refunded_amount=Decimal("0.00"),
        reference="RHP20260102-ABC123",
        created_at=now,
        updated_at=now,
    )


def test_payment_dict_has_exactly_the_documented_fields() -> None:
    """payment_dict() and PaymentRead (the OpenAPI schema) list the same fields."""
    assert set(payment_dict(make_payment())) == set(PaymentRead.model_fields)


def test_payment_dict_validates_against_the_models() -> None:
    """The dict the routes send is a valid PaymentRead, and with `message` a ChargeResponse."""
    data = payment_dict(make_payment())
    assert PaymentRead.model_validate(data).amount == Decimal("99.01")
    ChargeResponse.model_validate(data | {"message": "Payment successful"})
