"""A randomized storm of charges, refunds and tips (fixed seed, concurrent batches, the
simulator gateway), after which the ledger and the payments agree to the cent."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from payment_sandbox.runner import Sandbox
from payment_service.services.ledger_audit import (
    ledger_differences,
    settlement,
    write_settlement_csv,
)
from tests.integration.test_ledger import CHARGE, put_trip

SEED = 20261201
BATCHES = 15
BATCH_SIZE = 20
CENT = Decimal("0.01")


class Storm:
    def __init__(self, client: httpx.AsyncClient, peers: Sandbox, rng: random.Random) -> None:
        self.client, self.peers, self.rng = client, peers, rng
        self.drivers = [rng.randrange(10_000_000, 2_000_000_000) for _ in range(6)]
        self.trip_ids = iter(range(rng.randrange(3_000_000, 800_000_000, 1000), 10**12))
        self.fares: list[dict[str, Any]] = []  # successful fare payments
        self.trips_by_driver: dict[int, set[int]] = defaultdict(set)
        self.outcomes: dict[str, int] = defaultdict(int)

    async def charge(self) -> None:
        trip_id, driver = next(self.trip_ids), self.rng.choice(self.drivers)
        fare = Decimal(self.rng.randrange(100, 90_000)) / 100
        put_trip(self.peers, trip_id, driver, str(fare))
        self.trips_by_driver[driver].add(trip_id)
        body: dict[str, Any] = {
            "trip_id": trip_id,
            "method": self.rng.choice(["CARD", "UPI", "WALLET", "CASH"]),
            "idempotency_key": f"storm-{uuid.uuid4()}",
        }
        if self.rng.random() < 0.1:
            body["metadata"] = {"simulate": "decline"}
        response = await self.client.post(CHARGE, json=body)
        self.outcomes[f"charge {response.status_code}"] += 1
        if response.status_code == 201:
            self.fares.append(response.json())

    async def refund(self) -> None:
        if not self.fares:
            return await self.charge()
        fare = self.rng.choice(self.fares)
        body: dict[str, Any] = {"idempotency_key": f"storm-{uuid.uuid4()}"}
        if self.rng.random() < 0.8:
            body["amount"] = str(Decimal(self.rng.randrange(1, 20_000)) / 100)
        response = await self.client.post(f"/v1/payments/{fare['payment_id']}/refund", json=body)
        assert response.status_code in (200, 409, 422), response.text
        self.outcomes[f"refund {response.status_code}"] += 1

    async def tip(self) -> None:
        if not self.fares:
            return await self.charge()
        fare = self.rng.choice(self.fares)
        amount = str(Decimal(self.rng.randrange(1, 15_000)) / 100)
        key = f"storm-{uuid.uuid4()}"
        url = f"/v1/payments/{fare['payment_id']}/tips"
        # Sometimes the same tip twice at once: one tip, one replay.
        copies = 2 if self.rng.random() < 0.2 else 1
        answers = await asyncio.gather(
            *(
                self.client.post(url, json={"idempotency_key": key, "amount": amount})
                for _ in range(copies)
            )
        )
        for response in answers:
            assert response.status_code in (201, 202, 409, 422), response.text
            self.outcomes[f"tip {response.status_code}"] += 1
        if copies == 2 and answers[0].status_code == 201:
            assert answers[0].json()["payment_id"] == answers[1].json()["payment_id"]

    async def adjust(self) -> None:
        if not self.fares:
            return await self.charge()
        fare = self.rng.choice(self.fares)
        factor = Decimal(self.rng.randrange(50, 150)) / 100
        new_fare = max(Decimal("0.01"), (Decimal(str(fare["amount"])) * factor).quantize(CENT))
        response = await self.client.post(
            f"/v1/payments/{fare['payment_id']}/adjustments",
            json={
                "idempotency_key": f"storm-{uuid.uuid4()}",
                "new_fare": str(new_fare),
                "reason": "storm",
            },
        )
        assert response.status_code in (200, 201, 202, 409, 422), response.text
        self.outcomes[f"adjust {response.status_code}"] += 1

    async def run(self) -> None:
        for _ in range(BATCHES):
            operations = [
                self.rng.choices(
                    [self.charge, self.refund, self.tip, self.adjust], weights=[4, 3, 2, 2]
                )[0]
                for _ in range(BATCH_SIZE)
            ]
            await asyncio.gather(*(operation() for operation in operations))


async def test_storm_leaves_a_ledger_that_balances_and_agrees_with_everything(
    money_client: httpx.AsyncClient, peers: Sandbox, empty_db: AsyncEngine
) -> None:
    storm = Storm(money_client, peers, random.Random(SEED))
    await storm.run()
    print(dict(storm.outcomes))  # the storm's figures (pytest -s shows them)
    assert storm.outcomes["charge 201"] > 50 and storm.outcomes["refund 200"] > 20
    assert storm.outcomes["tip 201"] > 20
    assert storm.outcomes["adjust 201"] > 5 and storm.outcomes["adjust 200"] > 5

    async with empty_db.connect() as connection:
        unbalanced = (
            await connection.execute(
                text(
                    "SELECT journal_id FROM ledger_lines GROUP BY journal_id "
                    "HAVING sum(amount) <> 0"
                )
            )
        ).all()
        over = (
            await connection.execute(text("SELECT id FROM payments WHERE refunded_amount > amount"))
        ).all()
        journals = (await connection.execute(text("SELECT count(*) FROM ledger_journals"))).scalar()
    assert unbalanced == [] and over == []
    assert journals >= storm.outcomes["charge 201"] + storm.outcomes["tip 201"]

    # Each driver's earnings equal the sum of their trips' entries.
    for driver in storm.drivers:
        earned = await money_client.get(f"/v1/drivers/{driver}/earnings")
        assert earned.status_code == 200
        totals = {k: Decimal(str(v)) for k, v in earned.json()["totals"].items()}
        from_trips: dict[str, Decimal] = defaultdict(Decimal)
        for trip_id in storm.trips_by_driver[driver]:
            entries = (await money_client.get(f"/v1/trips/{trip_id}/ledger")).json()["entries"]
            for entry in entries:
                amount = Decimal(str(entry["amount"]))
                kind = {"FARE": "gross_fares", "TIP": "tips", "ADJUSTMENT": "adjustments"}[
                    entry["payment_kind"]
                ]
                from_trips["refunds" if entry["entry_type"] == "REFUND" else kind] += amount
                for line in entry["lines"]:
                    value = Decimal(str(line["amount"]))
                    if line["account"] == f"driver:{driver}":
                        from_trips["net"] -= value
                    if line["account"] == "platform:commission":
                        from_trips["commission"] -= value
        for name in ("gross_fares", "adjustments", "tips", "refunds", "commission", "net"):
            assert totals[name] == from_trips[name], (driver, name)
        assert totals["net"] == (
            totals["gross_fares"]
            + totals["adjustments"]
            + totals["tips"]
            - totals["refunds"]
            - totals["commission"]
        )

    # The reconciliation (ledger <-> payments) reports nothing.
    async with AsyncSession(empty_db) as session:
        checked, differences = await ledger_differences(session)
        assert checked >= storm.outcomes["charge 201"] and differences == []
        # The settlement CSV's totals equal the ledger's.
        today = datetime.now(UTC).date()
        result = await settlement(session, today)
    out = io.StringIO()
    write_settlement_csv(result, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[-1]["driver_id"] == "TOTAL"
    assert {int(r["driver_id"]) for r in rows[:-1]} == {
        d for d in storm.drivers if storm.trips_by_driver[d]
    }
    async with empty_db.connect() as connection:
        ledger_net = -(
            await connection.execute(
                text(
                    "SELECT coalesce(sum(amount), 0) FROM ledger_lines "
                    "WHERE account LIKE 'driver:%'"
                )
            )
        ).scalar_one()
        commission = -(
            await connection.execute(
                text(
                    "SELECT coalesce(sum(amount), 0) FROM ledger_lines "
                    "WHERE account = 'platform:commission'"
                )
            )
        ).scalar_one()
    print({"journals": journals, **{k: rows[-1][k] for k in rows[-1] if k != "date"}})
    assert Decimal(rows[-1]["net"]) == ledger_net
    assert Decimal(rows[-1]["commission"]) == commission
    for name in ("gross_fares", "adjustments", "tips", "refunds", "net"):
        assert Decimal(rows[-1][name]) == sum(Decimal(r[name]) for r in rows[:-1])


async def test_concurrent_refunds_never_pass_what_was_captured(
    money_client: httpx.AsyncClient, peers: Sandbox, empty_db: AsyncEngine
) -> None:
    trip_id = random.randrange(3_000_000, 800_000_000)
    put_trip(peers, trip_id, 424242, "10.00")
    fare = await money_client.post(
        CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": "conc-fare"}
    )
    url = f"/v1/payments/{fare.json()['payment_id']}/refund"
    answers = await asyncio.gather(
        *(
            money_client.post(url, json={"idempotency_key": f"cr-{i}", "amount": "3.00"})
            for i in range(10)
        )
    )
    assert sorted(a.status_code for a in answers).count(200) == 3
    async with AsyncSession(empty_db) as session:
        _, differences = await ledger_differences(session)
    assert differences == []
    entries = (await money_client.get(f"/v1/trips/{trip_id}/ledger")).json()["entries"]
    assert sum(Decimal(str(e["amount"])) for e in entries if e["entry_type"] == "REFUND") == 9
