"""The one-statement transactions of a charge (tx 1, tx 2, tx 3), each against PostgreSQL.

The HTTP tests cover the usual path; these pin the edges the statements decide alone:
a lost lease writes no payment, a paid trip claims no key, a finished key's answer comes
back in the claim's own round trip, and a payment someone else moved gets nothing more.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_service.db import RawReads
from payment_service.repositories.charge_finish import finish_processing_charge
from payment_service.repositories.charge_start import claim_charge, start_charge
from payment_service.services.ledger import JournalDraft

LEASE = timedelta(seconds=30)
TTL = timedelta(days=1)


async def _claim(engine: AsyncEngine, trip_id: int, key: str, token: str) -> Any:
    return await claim_charge(
        RawReads(engine),
        trip_id=trip_id,
        operation="charge",
        client_id="statements",
        key=key,
        fingerprint="f" * 64,
        token=token,
        lease=LEASE,
        ttl=TTL,
    )


async def _start(engine: AsyncEngine, trip_id: int, key_id: int, token: str) -> Any:
    return await start_charge(
        RawReads(engine),
        key_id=key_id,
        token=token,
        event_type="CHARGE_STARTED",
        event_data={"gateway": "test"},
        actor="statements",
        amount=Decimal("42.50"),
        metadata={},
        trip_id=trip_id,
        rider_id=7,
        driver_id=8,
        currency="INR",
        method="CARD",
        status="PROCESSING",
        reference=f"RHP-{trip_id}",
        gateway_idempotency_key=f"payment-{uuid.uuid4()}",
        kind="FARE",
        commission_rate=Decimal("0.20"),
        trip_snapshot={"trip_id": trip_id},
    )


async def _count(engine: AsyncEngine, sql: str, **params: object) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(sql), params) or 0)


async def test_a_lost_lease_writes_no_payment(
    engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    first = await _claim(engine, trip_id, f"lease-{trip_id}", "ours")
    assert first.claimed_id is not None and first.live is None and first.existing is None
    async with engine.begin() as connection:  # another request takes the key over
        await connection.execute(
            text("UPDATE idempotency_keys SET lease_token = 'theirs' WHERE id = :id"),
            {"id": first.claimed_id},
        )
    assert await _start(engine, trip_id, first.claimed_id, "ours") is None
    assert await _count(engine, "SELECT count(*) FROM payments WHERE trip_id = :t", t=trip_id) == 0
    started = await _start(engine, trip_id, first.claimed_id, "theirs")
    assert started is not None and started.bound
    assert started.payment.status == "PROCESSING"
    bound = await _count(
        engine,
        "SELECT count(*) FROM idempotency_keys WHERE id = :k AND payment_id = :p",
        k=first.claimed_id,
        p=started.payment.id,
    )
    assert bound == 1


async def test_a_paid_trip_claims_no_key_and_a_finished_key_answers_at_once(
    engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    key = f"paid-{trip_id}"
    first = await _claim(engine, trip_id, key, "t1")
    started = await _start(engine, trip_id, first.claimed_id, "t1")
    # Another key for the same trip: refused without a key row being written.
    other = await _claim(engine, trip_id, f"other-{trip_id}", "t2")
    assert other.claimed_id is None and other.existing is None
    assert other.live == (started.payment.id, "PROCESSING")
    assert (
        await _count(
            engine, "SELECT count(*) FROM idempotency_keys WHERE key = :k", k=f"other-{trip_id}"
        )
        == 0
    )
    # The same key again while in flight: its row, still IN_PROGRESS and bound.
    again = await _claim(engine, trip_id, key, "t3")
    assert again.claimed_id is None
    assert again.existing is not None and again.existing.state == "IN_PROGRESS"
    assert again.existing.payment_id == started.payment.id


async def test_tx3_writes_everything_once_and_nothing_for_a_payment_already_moved(
    engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    trip_id = new_trip_id()
    first = await _claim(engine, trip_id, f"finish-{trip_id}", "t1")
    payment = (await _start(engine, trip_id, first.claimed_id, "t1")).payment

    async def finish(status: str) -> Any:
        return await finish_processing_charge(
            RawReads(engine),
            payment_id=payment.id,
            status=status,
            gateway_reference="pi_test",
            failure_reason=None,
            updated_at=datetime.now(UTC),
            event_type=f"CHARGE_{status}",
            event_data={"source": "test"},
            actor="statements",
            journal=JournalDraft(
                "CAPTURE",
                Decimal("42.50"),
                "fare captured",
                (
                    ("processor:clearing", Decimal("42.50")),
                    ("driver:8", Decimal("-34.00")),
                    ("platform:commission", Decimal("-8.50")),
                ),
            ),
            message_type="payment",
            payload={"payment_id": payment.id, "amount": "42.50"},
            traceparent=None,
            operation="charge",
            status_code=201,
            body='{"stored": true}',
        )

    done = await finish("SUCCESS")
    assert done.moved and done.journal_posted
    again = await finish("FAILED")  # a second finisher: the row is no longer PROCESSING
    assert not again.moved and not again.journal_posted
    p = {"p": payment.id}
    assert (
        await _count(engine, "SELECT count(*) FROM payment_events WHERE payment_id = :p", **p) == 2
    )
    assert (
        await _count(engine, "SELECT count(*) FROM ledger_journals WHERE payment_id = :p", **p) == 1
    )
    assert (
        await _count(
            engine,
            "SELECT count(*) FROM ledger_lines l JOIN ledger_journals j ON j.id = l.journal_id"
            " WHERE j.payment_id = :p",
            **p,
        )
        == 3
    )
    assert (
        await _count(engine, "SELECT count(*) FROM notification_outbox WHERE payment_id = :p", **p)
        == 1
    )
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT p.status, k.state, k.response_body FROM payments p"
                    " JOIN idempotency_keys k ON k.payment_id = p.id WHERE p.id = :p"
                ),
                p,
            )
        ).one()
    assert tuple(row) == ("SUCCESS", "COMPLETED", '{"stored": true}')
