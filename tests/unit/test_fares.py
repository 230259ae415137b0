"""Fare computation: the trip's total, else the seed formula, exact and half-up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from payment_service.clients.trip import Trip
from payment_service.services.fares import FareUnavailableError, compute_fare

BASE, RATE = Decimal("5.00"), Decimal("2.50")


def trip(**fields: object) -> Trip:
    values: dict[str, object] = {
        "trip_id": 1,
        "rider_id": 1,
        "driver_id": 1,
        "status": "COMPLETED",
        "distance_km": None,
        "base_fare": None,
        "surge_multiplier": None,
        "total_fare": None,
    }
    values.update(fields)
    return Trip(**values)  # type: ignore[arg-type]


def test_total_fare_wins_over_the_formula() -> None:
    """A trip's total_fare is the amount even when a distance is present."""
    fare = compute_fare(
        trip(total_fare=Decimal("99.01"), distance_km=Decimal("10")),
        base_fare=BASE,
        rate_per_km=RATE,
    )
    assert fare == Decimal("99.01")


@pytest.mark.parametrize(
    ("distance", "surge", "expected"),
    [
        ("10", "1.0", "30.00"),
        ("12.3", "1.5", "53.63"),  # (5 + 30.75) * 1.5 = 53.625 -> half-up 53.63
        ("0.1", "1.0", "5.25"),
        ("7.7", "1.2", "29.10"),  # (5 + 19.25) * 1.2 = 29.1
        ("3.3", "2.0", "26.50"),
    ],
)
def test_formula_rounds_half_up_to_cents(distance: str, surge: str, expected: str) -> None:
    """(BASE_FARE + distance * RATE_PER_KM) * surge is rounded half-up, never banker's."""
    fare = compute_fare(
        trip(distance_km=Decimal(distance), surge_multiplier=Decimal(surge)),
        base_fare=BASE,
        rate_per_km=RATE,
    )
    assert fare == Decimal(expected)
    assert fare.as_tuple().exponent == -2


def test_missing_surge_means_one() -> None:
    """Without a surge multiplier the formula uses 1."""
    assert compute_fare(trip(distance_km=Decimal("2")), base_fare=BASE, rate_per_km=RATE) == (
        Decimal("10.00")
    )


def test_total_fare_is_quantised_half_up() -> None:
    """A total with more than two decimals is rounded half-up to cents."""
    fare = compute_fare(trip(total_fare=Decimal("10.005")), base_fare=BASE, rate_per_km=RATE)
    assert fare == Decimal("10.01")


def test_no_fare_and_no_distance_is_an_error() -> None:
    """A trip with neither total_fare nor distance cannot be priced."""
    with pytest.raises(FareUnavailableError):
        compute_fare(trip(), base_fare=BASE, rate_per_km=RATE)
