"""The sandbox Trip service: lookups, synthesised trips, runtime trips and request records."""

import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest

from payment_sandbox import (
    Sandbox,
    TripFileError,
    default_trips_file,
    load_trips_csv,
    synthetic_trip,
)
from payment_sandbox._json import dumps


async def test_trip_from_file_is_served_with_exact_json_numbers(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A file trip comes back with every field, amounts as JSON numbers with their digits."""
    response = await client.get(f"{sandbox.trip_url}/v1/trips/1")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert '"total_fare":99.01' in response.text
    assert '"base_fare":5.00' in response.text
    assert response.json() == {
        "trip_id": 1,
        "rider_id": 53,
        "driver_id": 58,
        "status": "COMPLETED",
        "distance_km": 37.6,
        "base_fare": 5.0,
        "surge_multiplier": 1.0,
        "total_fare": 99.01,
    }
    exact = json.loads(response.text, parse_float=Decimal)
    assert exact["total_fare"] == Decimal("99.01")


async def test_empty_cells_are_served_as_null(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    """Empty CSV cells are nulls, so the service falls back to its fare formula."""
    without_fare = (await client.get(f"{sandbox.trip_url}/v1/trips/2")).json()
    ongoing = (await client.get(f"{sandbox.trip_url}/v1/trips/3")).json()

    assert without_fare["total_fare"] is None
    assert without_fare["distance_km"] == 8.8
    assert ongoing == {
        "trip_id": 3,
        "rider_id": None,
        "driver_id": None,
        "status": "ONGOING",
        "distance_km": None,
        "base_fare": None,
        "surge_multiplier": None,
        "total_fare": None,
    }


@pytest.mark.parametrize("trip_id", [999, 999_999, -5])
async def test_unknown_trip_is_404(
    sandbox: Sandbox, client: httpx.AsyncClient, trip_id: int
) -> None:
    """Ids neither in the file nor in the synthesised range are not found."""
    response = await client.get(f"{sandbox.trip_url}/v1/trips/{trip_id}")

    assert response.status_code == 404
    assert response.json() == {"detail": "trip not found"}


async def test_ids_from_one_million_are_synthesised_completed_trips(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A load-test id answers a COMPLETED trip that is the same on every call."""
    first = await client.get(f"{sandbox.trip_url}/v1/trips/1000003")
    again = await client.get(f"{sandbox.trip_url}/v1/trips/1000003")

    assert first.status_code == 200
    assert first.text == again.text
    assert first.json() == {
        "trip_id": 1_000_003,
        "rider_id": 4,
        "driver_id": 1,
        "status": "COMPLETED",
        "distance_km": 22.6,
        "base_fare": 5.0,
        "surge_multiplier": 2.0,
        "total_fare": 123.0,
        "pickup_zone": "Z03",
        "drop_zone": "Z00",
        "started_at": "2026-11-05T10:43:00Z",
        "ended_at": "2026-11-05T11:50:00Z",
    }
    assert '"total_fare":123.00' in first.text


@pytest.mark.parametrize("trip_id", [1_000_000, 1_000_001, 1_234_567, 2_147_483_647])
def test_synthesised_fare_follows_the_payment_formula(trip_id: int) -> None:
    """total_fare is (5.00 + km x 2.50) x surge, half-up to cents, within documented ranges."""
    trip = synthetic_trip(trip_id)

    assert trip.distance_km is not None and trip.surge_multiplier is not None
    expected = (Decimal("5.00") + trip.distance_km * Decimal("2.50")) * trip.surge_multiplier
    assert trip.total_fare == expected.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert Decimal("1.0") <= trip.distance_km <= Decimal("40.0")
    assert trip.rider_id is not None and 1 <= trip.rider_id <= 500
    assert trip.driver_id is not None and 1 <= trip.driver_id <= 200


async def test_put_adds_then_replaces_a_trip(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    """PUT creates a trip (201), a second PUT replaces it (200), and GET serves the latest."""
    url = f"{sandbox.trip_url}/v1/trips/5000"
    body = {
        "rider_id": 7,
        "driver_id": 8,
        "status": "COMPLETED",
        "distance_km": 3.5,
        "base_fare": 5.00,
        "surge_multiplier": 1.0,
        "total_fare": 13.75,
    }

    created = await client.put(url, json=body)
    replaced = await client.put(url, json={**body, "trip_id": 5000, "status": "ONGOING"})
    served = await client.get(url)

    assert created.status_code == 201
    assert created.json()["trip_id"] == 5000
    assert replaced.status_code == 200
    assert served.json() == {**body, "trip_id": 5000, "status": "ONGOING", "base_fare": 5.0}
    assert '"total_fare":13.75' in served.text


async def test_put_keeps_decimal_digits_exact(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    """Numbers come back with the digits sent (no float detour), whatever the content type."""
    url = f"{sandbox.trip_url}/v1/trips/5001"
    await client.put(
        url,
        content=b'{"status": "COMPLETED", "total_fare": "10.10", '
        b'"distance_km": 0.1000000000000000001}',
    )

    served = await client.get(url)

    assert '"total_fare":10.10' in served.text
    assert '"distance_km":0.1000000000000000001' in served.text
    assert sandbox.trips.get(5001) is not None
    assert sandbox.trips.get(5001).total_fare == Decimal("10.10")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        {"trip_id": 6, "status": "COMPLETED"},
        {"status": "COMPLETED", "total_fare": -1},
        {"status": "COMPLETED", "fare": 10},
        {"total_fare": 10},
    ],
    ids=["other-id", "negative-fare", "unknown-field", "no-status"],
)
async def test_put_rejects_a_bad_trip(
    sandbox: Sandbox, client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    """A body that does not describe the trip at the path is a 422 and stores nothing."""
    response = await client.put(f"{sandbox.trip_url}/v1/trips/5002", json=body)

    assert response.status_code == 422
    assert sandbox.trips.get(5002) is None


async def test_runtime_trip_overrides_the_file_until_reset(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A PUT shadows a file trip; reset brings the file's version back."""
    await client.put(f"{sandbox.trip_url}/v1/trips/1", json={"status": "ONGOING"})
    assert (await client.get(f"{sandbox.trip_url}/v1/trips/1")).json()["status"] == "ONGOING"

    await sandbox.reset()

    assert (await client.get(f"{sandbox.trip_url}/v1/trips/1")).json()["status"] == "COMPLETED"


async def test_lookups_and_request_ids_are_recorded(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Every GET is counted, per trip too, with the X-Request-ID of the latest one."""
    await client.get(f"{sandbox.trip_url}/v1/trips/1", headers={"X-Request-ID": "req-1"})
    await client.get(f"{sandbox.trip_url}/v1/trips/1", headers={"X-Request-ID": "req-2"})
    await client.get(f"{sandbox.trip_url}/v1/trips/999", headers={"X-Request-ID": "req-3"})

    stats = (await client.get(f"{sandbox.trip_url}/_sandbox/stats", params={"trip_id": 1})).json()

    assert stats["get_requests"] == 3
    assert stats["trip_get_requests"] == 2
    assert stats["last_request_id"] == "req-3"
    assert sandbox.trips.get_requests == 3
    assert sandbox.trips.get_requests_for(999) == 1
    assert sandbox.trips.last_request_id == "req-3"


async def test_delete_stats_zeroes_the_counters(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """DELETE /_sandbox/stats starts a fresh count without touching the trips."""
    await client.get(f"{sandbox.trip_url}/v1/trips/1", headers={"X-Request-ID": "req-1"})

    cleared = await client.delete(f"{sandbox.trip_url}/_sandbox/stats")

    assert cleared.json() == {"get_requests": 0, "last_request_id": None, "trips": 4}
    assert sandbox.trips.get(1) is not None


def test_project_trips_file_loads() -> None:
    """The shipped seeds/rhfd_trips.csv is found from the checkout and served as is."""
    path = default_trips_file()
    trips = {trip.trip_id: trip for trip in load_trips_csv(path)}

    assert path.is_file()
    assert trips[1].total_fare == Decimal("99.01")
    assert len(trips) > 300
    assert all(trip.trip_id < 1_000_000 for trip in trips.values())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("trip_id,status\n1,COMPLETED\n", "header lacks"),
        (
            "trip_id,rider_id,driver_id,status,distance_km,base_fare,surge_multiplier,total_fare\n"
            "1,1,1,COMPLETED,1.0,5.00,1.0,9.99\n"
            "2,1,1,COMPLETED,1.0,5.00,1.0,abc\n",
            ":3: total_fare",
        ),
        (
            "trip_id,rider_id,driver_id,status,distance_km,base_fare,surge_multiplier,total_fare\n"
            "1,1,1,COMPLETED,1.0,5.00,1.0,9.99\n"
            "1,1,1,COMPLETED,1.0,5.00,1.0,9.99\n",
            ":3: duplicate trip_id 1",
        ),
    ],
    ids=["header", "bad-number", "duplicate"],
)
def test_bad_trips_file_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    """A malformed file is refused as a whole, naming the first bad line."""
    path = tmp_path / "trips.csv"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(TripFileError, match=message):
        load_trips_csv(path)


def test_decimal_json_keeps_digits_and_refuses_nan() -> None:
    """The encoder writes Decimals verbatim (no float detour) and never emits NaN."""
    assert dumps({"a": Decimal("0.10"), "b": [Decimal("1E+2"), None, "x"]}) == (
        '{"a":0.10,"b":[100,null,"x"]}'
    )
    with pytest.raises(ValueError, match="not a JSON number"):
        dumps(Decimal("NaN"))
