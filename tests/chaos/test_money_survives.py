"""Money taken by the processor is recorded exactly once, whatever crashes.

Each test breaks the path between "the processor captured" and "we recorded it" in a
different way (SIGKILL of serve, its PostgreSQL killed, the processor never answering,
a webhook overtaking the request) and ends with the money invariant of `conftest.py`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from payment_sandbox.processor import sign_payload
from tests.chaos.conftest import (
    Stack,
    StartStack,
    assert_money_invariant,
    assert_replay_is_what_the_caller_saw,
)
from tests.conftest import admin_sql
from tests.e2e.conftest import ThrowawayPostgres, hermetic_env, plain_url, run_cli, wait_until

pytestmark = pytest.mark.e2e

CHARGE = "/v1/payments/charge"


def new_trip() -> int:
    """A synthetic COMPLETED trip of the sandbox Trip service (ids >= 1,000,000)."""
    return random.randrange(10_000_000, 900_000_000)


def charge_body(trip_id: int, key: str) -> dict[str, Any]:
    return {"trip_id": trip_id, "method": "CARD", "idempotency_key": key}


async def captured_count(stack: Stack) -> int:
    return sum(i["capture_count"] for i in stack.peers.processor.ledger()["payment_intents"])


async def test_kill_9_after_capture_then_the_same_key_records_one_capture(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """serve is SIGKILLed after the processor captured and before it recorded; after a
    restart the same key resumes the payment: one capture, payment SUCCESS."""
    stack = await start_stack(e2e_database)
    await stack.peers.set_fault("processor", "timeout_after_capture")
    trip = new_trip()
    body = charge_body(trip, f"kill9-{trip}")
    async with stack.client() as client:
        pending = asyncio.create_task(client.post(CHARGE, json=body))
        await wait_until(lambda: captured_count(stack), 20, "the processor never captured")
        stack.service.kill()  # the answer never reaches the service
        with pytest.raises(httpx.TransportError):
            await pending
    row = await stack.payment(trip)
    assert row is not None and row["status"] == "PROCESSING"

    await stack.peers.set_fault("processor", "normal")
    await stack.service.restart()
    answer = await stack.retry_until(lambda c: c.post(CHARGE, json=body), {201})
    await assert_replay_is_what_the_caller_saw(stack, CHARGE, body, answer)
    assert answer.json()["payment_id"] == row["id"]
    assert answer.json()["status"] == "SUCCESS"
    assert await captured_count(stack) == 1
    figures = await assert_money_invariant(stack, tmp_path)
    assert figures == {"payments": 1, "payment_intents": 1}


async def test_kill_9_after_capture_and_no_retry_the_reconciler_records_it(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """Nobody retries: the restarted service's reconciler asks the processor and records
    SUCCESS; the caller's key then replays it."""
    stack = await start_stack(
        e2e_database, RECONCILE_AFTER_SECONDS="1", RECONCILE_INTERVAL_SECONDS="0.3"
    )
    await stack.peers.set_fault("processor", "timeout_after_capture")
    trip = new_trip()
    body = charge_body(trip, f"reconcile-{trip}")
    async with stack.client() as client:
        pending = asyncio.create_task(client.post(CHARGE, json=body))
        await wait_until(lambda: captured_count(stack), 20, "the processor never captured")
        stack.service.kill()
        with pytest.raises(httpx.TransportError):
            await pending
    await stack.peers.set_fault("processor", "normal")
    stack.service.env["RECONCILE_ENABLED"] = "true"
    await stack.service.restart()

    async def settled() -> bool:
        row = await stack.payment(trip)
        return row is not None and row["status"] == "SUCCESS"

    await wait_until(settled, 30, "the reconciler did not finish the payment")
    async with stack.client() as client:
        replay = await client.post(CHARGE, json=body)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await captured_count(stack) == 1
    await assert_money_invariant(stack, tmp_path)


async def test_postgres_killed_between_the_processor_and_the_recording(
    own_postgres: ThrowawayPostgres, start_stack: StartStack, tmp_path: Path
) -> None:
    """The service's own PostgreSQL is SIGKILLed while the processor (slow) captures; the
    recording fails, PostgreSQL comes back, the same key records one capture."""
    database = own_postgres.url.set(database="payments_chaos")
    await admin_sql(own_postgres.url, 'CREATE DATABASE "payments_chaos"')
    migrated = await run_cli(
        "migrate", env=hermetic_env(DATABASE_URL=plain_url(database)), cwd=tmp_path
    )
    assert migrated.returncode == 0, migrated.stderr
    stack = await start_stack(database, DB_CONNECT_TIMEOUT_SECONDS="1")
    await stack.peers.set_fault("processor", "slow", delay_seconds=3)
    trip = new_trip()
    body = charge_body(trip, f"pgkill-{trip}")
    async with stack.client() as client:
        pending = asyncio.create_task(client.post(CHARGE, json=body))

        async def processing() -> bool:
            row = await stack.payment(trip)
            return row is not None and row["status"] == "PROCESSING"

        await wait_until(processing, 20, "no PROCESSING payment before the processor call")
        await stack.engine.dispose()
        await asyncio.to_thread(own_postgres.kill)
        first = await pending
    assert first.status_code == 503, first.text  # never a 500
    assert first.headers["Retry-After"]
    assert await captured_count(stack) == 1  # the processor did take the money

    deadline = time.monotonic() + 60
    while True:  # orphaned backends may hold the shared memory for a moment
        try:
            await asyncio.to_thread(own_postgres.start)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    await stack.peers.set_fault("processor", "normal")
    answer = await stack.retry_until(lambda c: c.post(CHARGE, json=body), {201})
    await assert_replay_is_what_the_caller_saw(stack, CHARGE, body, answer)
    assert answer.json()["status"] == "SUCCESS"
    assert await captured_count(stack) == 1
    await assert_money_invariant(stack, tmp_path)


async def test_timeout_after_capture_is_a_503_and_the_retry_records_one_capture(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """The processor captures and never answers: the caller gets 503 + Retry-After, the
    payment stays PROCESSING, the retry records SUCCESS with the one capture."""
    stack = await start_stack(e2e_database, STRIPE_TIMEOUT_SECONDS="1")
    stack.peers.processor.webhook_url = None  # only the retry may record it here
    await stack.peers.set_fault("processor", "timeout_after_capture")
    trip = new_trip()
    body = charge_body(trip, f"timeout-{trip}")
    async with stack.client() as client:
        first = await client.post(CHARGE, json=body)
    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"]
    assert (await stack.payment(trip) or {}).get("status") == "PROCESSING"
    await stack.peers.set_fault("processor", "normal")
    answer = await stack.retry_until(lambda c: c.post(CHARGE, json=body), {201})
    await assert_replay_is_what_the_caller_saw(stack, CHARGE, body, answer)
    assert answer.json()["status"] == "SUCCESS"
    assert await captured_count(stack) == 1
    await assert_money_invariant(stack, tmp_path)


async def test_a_webhook_that_arrives_before_the_recording_finishes_the_payment_once(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """The processor captures, signs `payment_intent.succeeded` and holds the request: the
    webhook records SUCCESS while the request still waits; the request's own answer (503
    after its timeout) changes nothing, and the retry replays SUCCESS."""
    stack = await start_stack(e2e_database, STRIPE_TIMEOUT_SECONDS="4")
    await stack.peers.set_fault("processor", "timeout_after_capture")
    trip = new_trip()
    body = charge_body(trip, f"hook-first-{trip}")
    async with stack.client() as client:
        pending = asyncio.create_task(client.post(CHARGE, json=body))

        async def succeeded() -> bool:
            row = await stack.payment(trip)
            return row is not None and row["status"] == "SUCCESS"

        await wait_until(succeeded, 20, "the webhook did not record the payment")
        assert not pending.done()  # the request is still waiting for the processor
        first = await pending
    assert first.status_code in {201, 503}, first.text
    await stack.peers.set_fault("processor", "normal")
    answer = await stack.retry_until(lambda c: c.post(CHARGE, json=body), {201})
    await assert_replay_is_what_the_caller_saw(stack, CHARGE, body, answer)
    assert answer.json()["status"] == "SUCCESS"
    assert await captured_count(stack) == 1
    await assert_money_invariant(stack, tmp_path)


async def test_pending_then_webhook_and_forged_stale_and_replayed_webhooks(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """PENDING becomes SUCCESS by the processor's signed webhook; a forged signature and a
    stale one are 400s that change nothing; a redelivered event is applied once."""
    stack = await start_stack(e2e_database)
    await stack.peers.set_fault("processor", "pending", delay_seconds=1)
    trip = new_trip()
    async with stack.client() as client:
        first = await client.post(CHARGE, json=charge_body(trip, f"pending-{trip}"))
        assert first.status_code == 202, first.text
        assert first.json()["status"] == "PENDING"

        async def succeeded() -> bool:
            row = await stack.payment(trip)
            return row is not None and row["status"] == "SUCCESS"

        await wait_until(succeeded, 20, "the webhook did not settle the PENDING payment")
        payment_id = first.json()["payment_id"]
        intent = stack.peers.processor.ledger(str(payment_id))["payment_intents"][0]
        event = json.dumps(
            {
                "id": f"evt_chaos_{trip}",
                "object": "event",
                "type": "payment_intent.payment_failed",
                "created": int(time.time()),
                "livemode": False,
                "data": {"object": {"id": intent["id"], "object": "payment_intent",
                                    "status": "requires_payment_method",
                                    "metadata": {"payment_id": str(payment_id)}}},
            }
        )  # fmt: skip
        url = "/v1/gateway/webhooks/stripe"
        forged = await client.post(
            url, content=event, headers={"Stripe-Signature": sign_payload(event, "whsec_forged")}
        )
        assert forged.status_code == 400
        stale = sign_payload(event, stack.webhook_secret, int(time.time()) - 600)
        assert (
            await client.post(url, content=event, headers={"Stripe-Signature": stale})
        ).status_code == 400
        signed = {"Stripe-Signature": sign_payload(event, stack.webhook_secret)}
        applied = await client.post(url, content=event, headers=signed)
        assert applied.status_code == 200, applied.text
        again = await client.post(url, content=event, headers=signed)
        assert again.json()["outcome"] == "duplicate"
    # SUCCESS -> FAILED is not a transition the state machine (or its trigger) allows.
    assert (await stack.payment(trip) or {}).get("status") == "SUCCESS"
    await assert_money_invariant(stack, tmp_path)


async def test_25_concurrent_partial_refunds_with_a_slow_processor(
    e2e_database: URL, start_stack: StartStack, tmp_path: Path
) -> None:
    """25 concurrent partial refunds while the processor is slow (and then refusing some):
    never over the amount, refused refunds give their money back, the ledgers agree."""
    stack = await start_stack(e2e_database)
    trip = new_trip()
    async with stack.client() as client:
        charged = await client.post(CHARGE, json=charge_body(trip, f"refunds-{trip}"))
        assert charged.status_code == 201, charged.text
        payment = charged.json()
        amount = Decimal(str(payment["amount"]))
        part = (amount / 8).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        url = f"/v1/payments/{payment['payment_id']}/refund"

        await stack.peers.set_fault("processor", "decline")
        declined = await asyncio.gather(
            *(client.post(url, json={"idempotency_key": f"d-{i}", "amount": str(part)})
              for i in range(3))
        )  # fmt: skip
        assert {r.status_code for r in declined} == {422}
        assert all(r.json()["type"].endswith("refund-declined") for r in declined)

        await stack.peers.set_fault("processor", "slow", delay_seconds=0.3)
        answers = await asyncio.gather(
            *(client.post(url, json={"idempotency_key": f"r-{i}", "amount": str(part)})
              for i in range(25))
        )  # fmt: skip
    for i, seen in enumerate(answers):  # refused-before-recording answers (409) are not stored
        if seen.status_code in (200, 422):
            retry = {"idempotency_key": f"r-{i}", "amount": str(part)}
            if seen.status_code == 200 or seen.json()["type"].endswith("refund-declined"):
                await assert_replay_is_what_the_caller_saw(stack, url, retry, seen)
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 409, 422}, codes
    refunded = sum(Decimal(str(r.json()["refund_amount"])) for r in answers if r.status_code == 200)
    assert codes[200] == 8 and refunded == part * 8 <= amount, codes
    row = await stack.payment(trip)
    assert row is not None and row["refunded_amount"] == refunded
    assert row["refund_reserved"] == 0
    await assert_money_invariant(stack, tmp_path)
