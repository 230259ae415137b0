"""The fare of a trip: its `total_fare`, else the seed service's formula, in exact cents."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from payment_service.clients.trip import Trip

CENT = Decimal("0.01")


class FareUnavailableError(ValueError):
    """The trip carries neither a total fare nor a distance to price."""


def compute_fare(trip: Trip, *, base_fare: Decimal, rate_per_km: Decimal) -> Decimal:
    """`total_fare`, else `(BASE_FARE + distance_km * RATE_PER_KM) * surge`, half-up to cents."""
    if trip.total_fare is not None:
        fare = trip.total_fare
    elif trip.distance_km is not None:
        surge = trip.surge_multiplier if trip.surge_multiplier is not None else Decimal(1)
        fare = (base_fare + trip.distance_km * rate_per_km) * surge
    else:
        raise FareUnavailableError(f"trip {trip.trip_id} has neither total_fare nor distance_km")
    fare = fare.quantize(CENT, rounding=ROUND_HALF_UP)
    if fare < 0:
        raise FareUnavailableError(f"trip {trip.trip_id} has a negative fare")
    return fare
