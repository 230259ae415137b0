"""The ledger (issue 12): a balanced journal with every capture and refund, tips,
cancellation fees, and the read endpoints — against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from payment_sandbox.trips import Trip

CHARGE = "/v1/payments/charge"
CENT = Decimal("0.01")


def commission_of(amount: Decimal, rate: Decimal = Decimal("0.20")) -> Decimal:
    return (amount * rate).quantize(CENT, rounding=ROUND_HALF_UP)


def new_driver() -> int:
    return random.randrange(10_000_000, 2_000_000_000)


def put_trip(peers: Sandbox, trip_id: int, driver_id: int, fare: str, **extra: Any) -> None:
    values: dict[str, Any] = {
        "trip_id": trip_id,
        "rider_id": 77,
        "driver_id": driver_id,
        "status": "COMPLETED",
        "distance_km": Decimal("12.4"),
        "base_fare": Decimal("5.00"),
        "surge_multiplier": Decimal("1.0"),
        "total_fare": Decimal(fare),
        "pickup_zone": "Airport",
        "drop_zone": "Downtown",
    }
    values.update(extra)
    peers.trips.put(Trip(**values))


async def charge(client: httpx.AsyncClient, trip_id: int, **extra: Any) -> dict[str, Any]:
    body = {"trip_id": trip_id, "method": "CARD", "idempotency_key": f"c-{uuid.uuid4()}"}
    body.update(extra)
    response = await client.post(CHARGE, json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def trip_ledger(client: httpx.AsyncClient, trip_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/trips/{trip_id}/ledger", params={"limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["entries"]


def account_totals(entries: list[dict[str, Any]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for entry in entries:
        assert sum(Decimal(str(line["amount"])) for line in entry["lines"]) == 0
        for line in entry["lines"]:
            totals[line["account"]] += Decimal(str(line["amount"]))
    return dict(totals)


async def test_a_capture_posts_one_balanced_journal(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id, driver = new_trip_id(), new_driver()
    put_trip(peers, trip_id, driver, "99.99")
    payment = await charge(money_client, trip_id)
    assert payment["kind"] == "FARE"

    [entry] = await trip_ledger(money_client, trip_id)
    assert entry["entry_type"] == "CAPTURE" and entry["payment_id"] == payment["payment_id"]
    assert account_totals([entry]) == {
        "processor:clearing": Decimal("99.99"),
        f"driver:{driver}": -(Decimal("99.99") - Decimal("20.00")),
        "platform:commission": Decimal("-20.00"),
    }


async def test_refunds_reverse_in_proportion_and_a_full_refund_leaves_nothing(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    """Odd partial refunds never make the cents drift: after all of it, every account is 0."""
    trip_id, driver = new_trip_id(), new_driver()
    put_trip(peers, trip_id, driver, "10.03")
    payment = await charge(money_client, trip_id)
    for amount in ("0.01", "3.33", "0.07", None):
        body: dict[str, Any] = {"idempotency_key": f"r-{uuid.uuid4()}"}
        if amount:
            body["amount"] = amount
        refund = await money_client.post(f"/v1/payments/{payment['payment_id']}/refund", json=body)
        assert refund.status_code == 200, refund.text

    entries = await trip_ledger(money_client, trip_id)
    assert [e["entry_type"] for e in entries] == ["CAPTURE"] + ["REFUND"] * 4
    totals = account_totals(entries)
    assert set(totals.values()) == {Decimal("0")}, totals
    commission_back = [
        line["amount"]
        for e in entries[1:]
        for line in e["lines"]
        if line["account"] == "platform:commission"
    ]
    # cumulative rounding: 2.01 x 0.01/10.03 -> 0.00 (no line), then 0.67, 0.01, the rest.
    assert sum(Decimal(str(a)) for a in commission_back) == commission_of(Decimal("10.03"))


async def test_the_database_refuses_an_unbalanced_journal_and_any_change(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        async with connection.begin():
            payment_id = await _payment(connection)
        with pytest.raises(DBAPIError, match="does not balance"):
            async with connection.begin():
                journal = await _journal(connection, payment_id)
                await _line(connection, journal, "processor:clearing", "10.00")
                await _line(connection, journal, "driver:1", "-9.99")
        with pytest.raises(DBAPIError, match="does not balance"):
            async with connection.begin():
                await _journal(connection, payment_id)  # no lines at all
        async with connection.begin():
            journal = await _journal(connection, payment_id)
            await _line(connection, journal, "processor:clearing", "10.00")
            await _line(connection, journal, "driver:1", "-10.00")
        for statement in (
            "UPDATE ledger_lines SET amount = amount * 2 WHERE journal_id = :j",
            "DELETE FROM ledger_lines WHERE journal_id = :j",
            "DELETE FROM ledger_journals WHERE id = :j",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with connection.begin():
                    await connection.execute(text(statement), {"j": journal})


async def _payment(connection: Any) -> int:
    row = await connection.execute(
        text(
            "INSERT INTO payments (trip_id, amount, method, status, reference) "
            "VALUES (:t, 10, 'CARD', 'SUCCESS', :r) RETURNING id"
        ),
        {"t": random.randrange(8_000_000_000, 9_000_000_000), "r": f"T-{uuid.uuid4().hex[:20]}"},
    )
    return row.scalar_one()


async def _journal(connection: Any, payment_id: int) -> int:
    row = await connection.execute(
        text(
            "INSERT INTO ledger_journals (entry_type, payment_kind, payment_id, refund_id, "
            "trip_id, amount) VALUES ('CAPTURE', 'FARE', :p, NULL, 1, 10) RETURNING id"
        ).bindparams(p=payment_id)
    )
    return row.scalar_one()


async def _line(connection: Any, journal: int, account: str, amount: str) -> None:
    await connection.execute(
        text("INSERT INTO ledger_lines (journal_id, account, amount) VALUES (:j, :a, :m)"),
        {"j": journal, "a": account, "m": Decimal(amount)},
    )


async def test_a_tip_is_all_the_drivers_and_shows_in_the_earnings(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id, driver = new_trip_id(), new_driver()
    put_trip(peers, trip_id, driver, "50.00")
    fare = await charge(money_client, trip_id)
    response = await money_client.post(
        f"/v1/payments/{fare['payment_id']}/tips",
        json={"idempotency_key": "tip-1", "amount": 12.5},
    )
    assert response.status_code == 201, response.text
    tip = response.json()
    assert (tip["kind"], tip["parent_payment_id"], tip["amount"]) == (
        "TIP",
        fare["payment_id"],
        12.5,
    )
    assert tip["trip_id"] == trip_id and tip["driver_id"] == driver

    entries = await trip_ledger(money_client, trip_id)
    assert [(e["payment_kind"], e["entry_type"]) for e in entries] == [
        ("FARE", "CAPTURE"),
        ("TIP", "CAPTURE"),
    ]
    assert account_totals([entries[1]]) == {
        "processor:clearing": Decimal("12.50"),
        f"driver:{driver}": Decimal("-12.50"),
    }
    earnings = await money_client.get(f"/v1/drivers/{driver}/earnings")
    assert earnings.status_code == 200, earnings.text
    totals = earnings.json()["totals"]
    assert totals == {
        "gross_fares": 50.0,
        "adjustments": 0.0,
        "tips": 12.5,
        "refunds": 0.0,
        "commission": 10.0,
        "net": 52.5,
    }
    assert earnings.json()["total"] == 1 and earnings.json()["days"][0]["entries"] == 2
    day = earnings.json()["days"][0]["day"]
    empty = await money_client.get(
        f"/v1/drivers/{driver}/earnings", params={"from": "2001-01-01", "to": "2001-01-02"}
    )
    assert empty.json()["days"] == [] and empty.json()["totals"]["net"] == 0
    backwards = await money_client.get(
        f"/v1/drivers/{driver}/earnings", params={"from": day, "to": "2001-01-01"}
    )
    assert backwards.status_code == 422


async def test_ten_concurrent_tips_with_one_key_make_one_tip(
    money_client: httpx.AsyncClient,
    peers: Sandbox,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    trip_id = new_trip_id()
    put_trip(peers, trip_id, new_driver(), "30.00")
    fare = await charge(money_client, trip_id)
    url = f"/v1/payments/{fare['payment_id']}/tips"
    answers = await asyncio.gather(
        *(
            money_client.post(url, json={"idempotency_key": "same", "amount": "5.00"})
            for _ in range(10)
        )
    )
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["payment_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
    async with engine.connect() as connection:
        tips = (
            await connection.execute(
                text("SELECT count(*) FROM payments WHERE parent_payment_id = :p"),
                {"p": fare["payment_id"]},
            )
        ).scalar_one()
    assert tips == 1
    other_body = await money_client.post(url, json={"idempotency_key": "same", "amount": "6.00"})
    assert other_body.status_code == 422


async def test_each_kind_has_its_outbox_message_type(
    money_client: httpx.AsyncClient,
    peers: Sandbox,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    trip_id, fee_trip = new_trip_id(), new_trip_id()
    put_trip(peers, trip_id, new_driver(), "30.00")
    put_trip(peers, fee_trip, new_driver(), "0", status="CANCELLED", cancellation_fee=Decimal(3))
    fare = await charge(money_client, trip_id)
    fee = await charge(money_client, fee_trip)
    base = f"/v1/payments/{fare['payment_id']}"
    tip = await money_client.post(f"{base}/tips", json={"idempotency_key": "o1", "amount": 2})
    up = await money_client.post(
        f"{base}/adjustments", json={"idempotency_key": "o2", "new_fare": 31, "reason": "x"}
    )
    down = await money_client.post(
        f"{base}/adjustments", json={"idempotency_key": "o3", "new_fare": 29, "reason": "y"}
    )
    assert (tip.status_code, up.status_code, down.status_code) == (201, 201, 200)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT message_type, payload->>'kind' AS kind FROM notification_outbox "
                    "WHERE payment_id = ANY(:ids) ORDER BY id"
                ),
                {
                    "ids": [
                        fare["payment_id"],
                        fee["payment_id"],
                        tip.json()["payment_id"],
                        up.json()["payment_id"],
                    ]
                },
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("payment", "FARE"),
        ("cancellation_fee", "CANCELLATION_FEE"),
        ("tip", "TIP"),
        ("adjustment", "ADJUSTMENT"),
        ("adjustment", None),  # the downward adjustment's refund, on the fare payment
    ]


async def test_tips_are_limited_and_only_on_a_paid_fare(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    put_trip(peers, trip_id, new_driver(), "30.00")
    fare = await charge(money_client, trip_id)
    url = f"/v1/payments/{fare['payment_id']}/tips"
    big = await money_client.post(url, json={"idempotency_key": "t1", "amount": "400.00"})
    assert big.status_code == 201
    over = await money_client.post(url, json={"idempotency_key": "t2", "amount": "100.01"})
    assert over.status_code == 422 and over.json()["type"].endswith("/tip-not-allowed")
    assert over.json()["remaining_tip"] == 100.0
    # Retrying a refused key later works: nothing was stored for it.
    fits = await money_client.post(url, json={"idempotency_key": "t2", "amount": "100.00"})
    assert fits.status_code == 201
    on_tip = await money_client.post(
        f"/v1/payments/{big.json()['payment_id']}/tips",
        json={"idempotency_key": "t3", "amount": "1.00"},
    )
    assert on_tip.status_code == 409
    missing = await money_client.post(
        "/v1/payments/987654321/tips", json={"idempotency_key": "t4", "amount": "1.00"}
    )
    assert missing.status_code == 404
    bad = await money_client.post(url, json={"idempotency_key": "t5", "amount": "-1"})
    assert bad.status_code == 422


async def test_a_cancelled_trip_with_a_fee_is_charged_the_fee(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    with_fee, without_fee, driver = new_trip_id(), new_trip_id(), new_driver()
    put_trip(peers, with_fee, driver, "0", status="CANCELLED", cancellation_fee=Decimal("4.99"))
    put_trip(peers, without_fee, driver, "0", status="CANCELLED")
    fee = await charge(money_client, with_fee)
    assert (fee["kind"], fee["amount"]) == ("CANCELLATION_FEE", 4.99)
    refused = await money_client.post(
        CHARGE, json={"trip_id": without_fee, "method": "CARD", "idempotency_key": "nofee"}
    )
    assert refused.status_code == 422 and refused.json()["type"].endswith("/trip-not-completed")
    [entry] = await trip_ledger(money_client, with_fee)
    assert account_totals([entry])["platform:commission"] == -commission_of(Decimal("4.99"))
    again = await money_client.post(
        CHARGE, json={"trip_id": with_fee, "method": "CARD", "idempotency_key": "fee-2"}
    )
    assert again.status_code == 409  # one live fee per trip, like a fare


async def test_adjustments_charge_or_refund_the_difference(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id, driver = new_trip_id(), new_driver()
    put_trip(peers, trip_id, driver, "40.00")
    fare = await charge(money_client, trip_id)
    url = f"/v1/payments/{fare['payment_id']}/adjustments"

    up = await money_client.post(
        url, json={"idempotency_key": "a1", "new_fare": 55.55, "reason": "Toll added"}
    )
    assert up.status_code == 201, up.text
    assert (up.json()["kind"], up.json()["amount"]) == ("ADJUSTMENT", 15.55)
    replay = await money_client.post(
        url, json={"idempotency_key": "a1", "new_fare": 55.55, "reason": "Toll added"}
    )
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == up.json()

    down = await money_client.post(
        url, json={"idempotency_key": "a2", "new_fare": "35.00", "reason": "Wrong route"}
    )
    assert down.status_code == 200, down.text
    assert down.json()["refund_amount"] == 20.55
    same = await money_client.post(
        url, json={"idempotency_key": "a3", "new_fare": "35.00", "reason": "again"}
    )
    assert same.status_code == 422
    too_low = await money_client.post(
        url, json={"idempotency_key": "a4", "new_fare": "0.01", "reason": "free"}
    )
    # 35.00 -> 0.01 gives back 34.99, but only 40.00 - 20.55 = 19.45 remains on the fare.
    assert too_low.status_code == 422 and too_low.json()["remaining_refundable"] == 19.45

    entries = await trip_ledger(money_client, trip_id)
    assert [(e["payment_kind"], e["entry_type"]) for e in entries] == [
        ("FARE", "CAPTURE"),
        ("ADJUSTMENT", "CAPTURE"),
        ("FARE", "REFUND"),
    ]
    totals = account_totals(entries)
    # The driver nets 80% of the trip's final fare of 35.00, to the cent.
    assert totals[f"driver:{driver}"] + totals["platform:commission"] == Decimal("-35.00")
    assert totals["processor:clearing"] == Decimal("35.00")


async def test_concurrent_adjustments_and_refunds_never_pass_what_was_captured(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    put_trip(peers, trip_id, new_driver(), "20.00")
    fare = await charge(money_client, trip_id)
    base = f"/v1/payments/{fare['payment_id']}"
    answers = await asyncio.gather(
        *(
            money_client.post(
                f"{base}/adjustments",
                json={"idempotency_key": f"ca-{i}", "new_fare": "14.00", "reason": f"r{i}"},
            )
            for i in range(5)
        ),
        *(
            money_client.post(
                f"{base}/refund", json={"idempotency_key": f"cr-{i}", "amount": "5.00"}
            )
            for i in range(5)
        ),
    )
    assert all(a.status_code in (200, 409, 422) for a in answers), [a.text for a in answers]
    payment = (await money_client.get(base)).json()
    assert Decimal(str(payment["refunded_amount"])) <= Decimal("20.00")
    entries = await trip_ledger(money_client, trip_id)
    refunded = sum(Decimal(str(e["amount"])) for e in entries if e["entry_type"] == "REFUND")
    assert refunded == Decimal(str(payment["refunded_amount"]))


async def test_the_receipt_shows_the_trip_the_fare_parts_tips_and_adjustments(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    put_trip(
        peers,
        trip_id,
        new_driver(),
        "45.00",
        surge_multiplier=Decimal("1.5"),
        started_at="2026-12-01T08:00:00Z",
        ended_at="2026-12-01T08:31:00Z",
    )
    fare = await charge(money_client, trip_id)
    base = f"/v1/payments/{fare['payment_id']}"
    tip = await money_client.post(f"{base}/tips", json={"idempotency_key": "rt", "amount": 7})
    assert tip.status_code == 201
    adjusted = await money_client.post(
        f"{base}/adjustments",
        json={"idempotency_key": "ra", "new_fare": 40, "reason": "Shorter route"},
    )
    assert adjusted.status_code == 200, adjusted.text
    peers.trips.reset()  # the receipt needs no Trip call: the payment kept the trip

    receipt = (await money_client.get(f"{base}/receipt")).json()
    assert receipt["merchant_name"] == "Ride Hailing Payments"
    assert receipt["trip"] == {
        "pickup_zone": "Airport",
        "drop_zone": "Downtown",
        "distance_km": 12.4,
        "started_at": "2026-12-01T08:00:00Z",
        "ended_at": "2026-12-01T08:31:00Z",
    }
    assert receipt["fare_breakdown"] == {
        "base": 5.0,
        "distance": 25.0,
        "surge": 15.0,
        "surge_multiplier": 1.5,
        "total": 45.0,
    }
    assert [t["amount"] for t in receipt["tips"]] == [7.0] and receipt["tips_total"] == 7.0
    [adjustment] = receipt["adjustments"]
    assert (adjustment["old_fare"], adjustment["new_fare"], adjustment["reason"]) == (
        45.0,
        40.0,
        "Shorter route",
    )
    assert receipt["refunded_amount"] == 5.0 and receipt["net_amount"] == 40.0
    page = await money_client.get(f"{base}/receipt", headers={"Accept": "text/html"})
    for text_shown in ("Airport", "Downtown", "Shorter route", "Tips", "Ride Hailing Payments"):
        assert text_shown in page.text
