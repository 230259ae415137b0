"""The read API: listing with filters, order, pagination and bad input; one payment by id."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import SEED_FILE, reset_database

PROBLEM_JSON = "application/problem+json"
SEED_ROWS: list[dict[str, str]] = list(csv.DictReader(SEED_FILE.open(encoding="utf-8")))
SEED_FIELDS = {"payment_id", "trip_id", "amount", "method", "status", "reference", "created_at"}
PAYMENT_FIELDS = SEED_FIELDS | {
    "rider_id",
    "driver_id",
    "currency",
    "refunded_amount",
    "updated_at",
    "kind",
    "parent_payment_id",
}


def _newest_first(rows: list[dict[str, str]]) -> list[int]:
    """Payment ids ordered by created_at desc, then id desc (the API's order)."""
    ordered = sorted(rows, key=lambda r: (r["created_at"], int(r["payment_id"])), reverse=True)
    return [int(r["payment_id"]) for r in ordered]


def _ids(response: httpx.Response) -> list[int]:
    return [payment["payment_id"] for payment in response.json()["payments"]]


@pytest.fixture(scope="module")
async def seed_once(engine: AsyncEngine) -> AsyncEngine:
    """The project's seed rows, loaded once for this module (tests add rows only temporarily)."""
    await reset_database(engine)
    return engine


@pytest.fixture
async def api(seed_once: AsyncEngine, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client over the app whose database holds exactly the seed."""
    return client


@pytest.fixture
async def extra_payments(seed_once: AsyncEngine) -> AsyncIterator[list[dict[str, Any]]]:
    """Four committed payments with rider/driver ids and one shared created_at, removed after."""
    rows = [
        {"trip": 7_700_001, "rider": 501, "driver": 901, "method": "CARD", "status": "SUCCESS"},
        {"trip": 7_700_002, "rider": 501, "driver": 902, "method": "UPI", "status": "PENDING"},
        {"trip": 7_700_003, "rider": 502, "driver": 901, "method": "CARD", "status": "FAILED"},
        {"trip": 7_700_004, "rider": 503, "driver": 903, "method": "WALLET", "status": "SUCCESS"},
    ]
    async with seed_once.begin() as connection:
        for row in rows:
            row["payment_id"] = await connection.scalar(
                text(
                    "INSERT INTO payments (trip_id, rider_id, driver_id, amount, method, status,"
                    " reference, created_at, updated_at) VALUES (:trip, :rider, :driver, 12.34,"
                    " :method, :status, :reference, '2030-01-01T00:00:00Z',"
                    " '2030-01-01T00:00:00Z') RETURNING id"
                ),
                {**row, "reference": f"READ-API-{row['trip']}"},
            )
    try:
        yield rows
    finally:
        async with seed_once.begin() as connection:
            await connection.execute(
                text("DELETE FROM payments WHERE id = ANY(:ids)"),
                {"ids": [row["payment_id"] for row in rows]},
            )


# --- listing ---


async def test_list_defaults_to_100_of_350_newest_first(api: httpx.AsyncClient) -> None:
    """Without parameters: limit 100, offset 0, total 350, the 100 newest payments in order."""
    response = await api.get("/v1/payments")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["limit"], body["offset"], body["count"], body["total"]) == (100, 0, 100, 350)
    assert _ids(response) == _newest_first(SEED_ROWS)[:100]


async def test_list_items_carry_every_payment_field(api: httpx.AsyncClient) -> None:
    """Each listed payment has the seed's fields and the service's additions."""
    response = await api.get("/v1/payments", params={"limit": 5})

    for payment in response.json()["payments"]:
        assert set(payment) == PAYMENT_FIELDS


async def test_pages_cover_every_payment_once_in_order(api: httpx.AsyncClient) -> None:
    """Walking the pages with limit/offset yields all 350 ids once, in the API's order."""
    seen: list[int] = []
    for offset in range(0, 400, 100):
        response = await api.get("/v1/payments", params={"limit": 100, "offset": offset})
        assert response.json()["total"] == 350
        seen.extend(_ids(response))

    assert seen == _newest_first(SEED_ROWS)


async def test_equal_created_at_is_ordered_by_id_descending(
    api: httpx.AsyncClient, extra_payments: list[dict[str, Any]]
) -> None:
    """Payments with the same created_at come newest id first."""
    response = await api.get("/v1/payments", params={"limit": 4})

    assert _ids(response) == sorted((row["payment_id"] for row in extra_payments), reverse=True)


async def test_filter_by_trip_id_returns_every_payment_of_that_trip(
    api: httpx.AsyncClient,
) -> None:
    """trip_id returns all payments of the trip (a FAILED one and its retry alike)."""
    trips = Counter(row["trip_id"] for row in SEED_ROWS)
    trip_id = next(trip for trip, count in trips.items() if count > 1)
    expected = _newest_first([row for row in SEED_ROWS if row["trip_id"] == trip_id])

    response = await api.get("/v1/payments", params={"trip_id": trip_id})

    assert response.status_code == 200
    assert _ids(response) == expected
    assert response.json()["total"] == len(expected)


@pytest.mark.parametrize("status", ["SUCCESS", "FAILED", "PENDING"])
async def test_filter_by_status(api: httpx.AsyncClient, status: str) -> None:
    """status returns exactly the payments in that status."""
    expected = _newest_first([row for row in SEED_ROWS if row["status"] == status])

    response = await api.get("/v1/payments", params={"status": status, "limit": 500})

    assert response.json()["total"] == len(expected)
    assert _ids(response) == expected


async def test_filter_status_is_case_insensitive(api: httpx.AsyncClient) -> None:
    """A lowercase status (and method) is accepted and means the same as uppercase."""
    lower = await api.get("/v1/payments", params={"status": "success", "method": "card"})
    upper = await api.get("/v1/payments", params={"status": "SUCCESS", "method": "CARD"})

    assert lower.status_code == 200
    assert lower.json() == upper.json()
    assert lower.json()["total"] > 0


@pytest.mark.parametrize("method", ["CARD", "UPI", "WALLET", "CASH"])
async def test_filter_by_method(api: httpx.AsyncClient, method: str) -> None:
    """method returns exactly the payments made with that method."""
    expected = _newest_first([row for row in SEED_ROWS if row["method"] == method])

    response = await api.get("/v1/payments", params={"method": method, "limit": 500})

    assert response.json()["total"] == len(expected)
    assert _ids(response) == expected


async def test_filter_by_rider_id(
    api: httpx.AsyncClient, extra_payments: list[dict[str, Any]]
) -> None:
    """rider_id returns only that rider's payments."""
    expected = sorted((r["payment_id"] for r in extra_payments if r["rider"] == 501), reverse=True)

    response = await api.get("/v1/payments", params={"rider_id": 501})

    assert _ids(response) == expected
    assert {p["rider_id"] for p in response.json()["payments"]} == {501}


async def test_filter_by_driver_id(
    api: httpx.AsyncClient, extra_payments: list[dict[str, Any]]
) -> None:
    """driver_id returns only that driver's payments."""
    expected = sorted((r["payment_id"] for r in extra_payments if r["driver"] == 901), reverse=True)

    response = await api.get("/v1/payments", params={"driver_id": 901})

    assert _ids(response) == expected
    assert {p["driver_id"] for p in response.json()["payments"]} == {901}


async def test_filters_combine_with_and(
    api: httpx.AsyncClient, extra_payments: list[dict[str, Any]]
) -> None:
    """Several filters together return payments matching all of them."""
    expected = [
        r["payment_id"]
        for r in extra_payments
        if r["driver"] == 901 and r["method"] == "CARD" and r["status"] == "SUCCESS"
    ]

    response = await api.get(
        "/v1/payments", params={"driver_id": 901, "method": "CARD", "status": "SUCCESS"}
    )

    assert _ids(response) == expected
    assert response.json()["total"] == 1


async def test_filter_matching_nothing_is_an_empty_page(api: httpx.AsyncClient) -> None:
    """A valid filter with no match gives 200, an empty list and total 0."""
    response = await api.get("/v1/payments", params={"rider_id": 424242})

    assert response.status_code == 200
    assert response.json() == {"payments": [], "count": 0, "total": 0, "limit": 100, "offset": 0}


@pytest.mark.parametrize(("limit", "count"), [(1, 1), (500, 350)])
async def test_limit_bounds_are_accepted(api: httpx.AsyncClient, limit: int, count: int) -> None:
    """limit 1 and limit 500 are valid; total stays 350."""
    response = await api.get("/v1/payments", params={"limit": limit})

    assert response.status_code == 200
    body = response.json()
    assert (body["limit"], body["count"], body["total"]) == (limit, count, 350)
    assert _ids(response) == _newest_first(SEED_ROWS)[:count]


async def test_offset_beyond_total_is_an_empty_page_with_the_total(
    api: httpx.AsyncClient,
) -> None:
    """An offset past the end gives no payments but the right total."""
    response = await api.get("/v1/payments", params={"offset": 1000})

    assert response.status_code == 200
    assert response.json() == {
        "payments": [],
        "count": 0,
        "total": 350,
        "limit": 100,
        "offset": 1000,
    }


async def test_last_partial_page(api: httpx.AsyncClient) -> None:
    """offset 340 returns the last 10 payments with total 350."""
    response = await api.get("/v1/payments", params={"offset": 340})

    body = response.json()
    assert (body["count"], body["total"]) == (10, 350)
    assert _ids(response) == _newest_first(SEED_ROWS)[340:]


def _assert_validation_problem(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(problem)
    assert problem["status"] == 422
    assert field in {error["field"] for error in problem["errors"]}


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5", ""])
async def test_bad_limit_is_a_422_problem(api: httpx.AsyncClient, limit: str) -> None:
    """limit outside 1..500 or not an integer is a 422 problem naming `limit`."""
    response = await api.get("/v1/payments", params={"limit": limit})

    _assert_validation_problem(response, "limit")


@pytest.mark.parametrize("offset", ["-1", "abc"])
async def test_bad_offset_is_a_422_problem(api: httpx.AsyncClient, offset: str) -> None:
    """A negative or non-integer offset is a 422 problem naming `offset`."""
    response = await api.get("/v1/payments", params={"offset": offset})

    _assert_validation_problem(response, "offset")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("status", "PAID"),
        ("method", "BITCOIN"),
        ("trip_id", "abc"),
        ("trip_id", "0"),
        ("trip_id", "9223372036854775808"),
        ("rider_id", "-5"),
        ("rider_id", "99999999999999999999"),
        ("driver_id", "x"),
    ],
)
async def test_bad_filter_value_is_a_422_problem(
    api: httpx.AsyncClient, name: str, value: str
) -> None:
    """A bad or out-of-BIGINT filter value is a 422 naming the filter, never a 500 or []."""
    response = await api.get("/v1/payments", params={name: value})

    _assert_validation_problem(response, name)


async def test_unknown_query_parameter_is_a_422_problem(api: httpx.AsyncClient) -> None:
    """An unknown parameter (e.g. a misspelt filter) is a 422, not a silently unfiltered list."""
    response = await api.get("/v1/payments", params={"stauts": "SUCCESS"})

    _assert_validation_problem(response, "stauts")


# --- one payment ---


async def test_get_payment_1_has_exact_amount_as_json_number(api: httpx.AsyncClient) -> None:
    """GET /v1/payments/1 answers the seed row, amount written as the JSON number 99.01."""
    response = await api.get("/v1/payments/1")

    assert response.status_code == 200
    assert '"amount":99.01' in response.text
    payment = json.loads(response.text, parse_float=Decimal)
    assert set(payment) == PAYMENT_FIELDS
    assert payment["amount"] == Decimal("99.01")
    assert payment["refunded_amount"] == Decimal("0")
    assert {key: payment[key] for key in ("payment_id", "trip_id", "method", "status")} == {
        "payment_id": 1,
        "trip_id": 336,
        "method": "CARD",
        "status": "SUCCESS",
    }
    seed = SEED_ROWS[0]
    assert payment["reference"] == seed["reference"]
    assert payment["created_at"] == seed["created_at"].replace(" ", "T") + "Z"
    assert payment["currency"] == "INR"
    assert (payment["rider_id"], payment["driver_id"]) == (None, None)


async def test_amounts_in_lists_are_json_numbers_with_their_cents(api: httpx.AsyncClient) -> None:
    """Every amount in a page equals the seed's decimal exactly (no float rounding, no strings)."""
    response = await api.get("/v1/payments", params={"limit": 500})

    by_id = {int(row["payment_id"]): Decimal(row["amount"]) for row in SEED_ROWS}
    payments = json.loads(response.text, parse_float=Decimal)["payments"]
    assert all(not isinstance(p["amount"], str) for p in payments)
    assert {p["payment_id"]: Decimal(p["amount"]) for p in payments} == by_id


async def test_unknown_payment_is_a_404_problem(api: httpx.AsyncClient) -> None:
    """GET /v1/payments/999999 is a 404 problem+json with type, title, status and detail."""
    response = await api.get("/v1/payments/999999")

    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == 404
    assert "999999" in problem["detail"]


@pytest.mark.parametrize("payment_id", ["abc", "0", "-1", "1.5", "99999999999999999999"])
async def test_bad_payment_id_is_a_422_problem(api: httpx.AsyncClient, payment_id: str) -> None:
    """A payment id that is not a positive 64-bit integer is a 422 problem naming it."""
    response = await api.get(f"/v1/payments/{payment_id}")

    _assert_validation_problem(response, "payment_id")
