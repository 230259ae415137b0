"""The commission split and its cumulative reversal: every cent accounted for."""

from __future__ import annotations

import random
from decimal import Decimal

from payment_service.services.ledger import capture_split, refund_split


def test_capture_commission_rounds_half_up_and_the_driver_gets_the_rest() -> None:
    assert capture_split(Decimal("10.03"), Decimal("0.20")) == (Decimal("2.01"), Decimal("8.02"))
    assert capture_split(Decimal("0.025"), Decimal("1"))[0] == Decimal("0.03")
    assert capture_split(Decimal("12.50"), Decimal("0")) == (Decimal("0.00"), Decimal("12.50"))


def test_any_sequence_of_refunds_reverses_exactly_the_capture() -> None:
    rng = random.Random(7)
    for _ in range(500):
        amount = Decimal(rng.randrange(1, 100_000)) / 100
        rate = Decimal(rng.randrange(0, 101)) / 100
        commission, driver = capture_split(amount, rate)
        refunded, reversed_commission, reversed_driver = Decimal(0), Decimal(0), Decimal(0)
        while refunded < amount:
            left = amount - refunded
            part = min(left, Decimal(rng.randrange(1, 5_000)) / 100)
            c, d = refund_split(
                captured=amount,
                commission=commission,
                refunded_before=refunded,
                commission_reversed_before=reversed_commission,
                amount=part,
            )
            assert c + d == part
            refunded += part
            reversed_commission += c
            reversed_driver += d
            assert 0 <= reversed_commission <= commission
        assert (reversed_commission, reversed_driver) == (commission, driver)
