"""Outbox notifications end to end: `serve` and `worker` processes delivering to the sandbox."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from tests.e2e.conftest import STARTUP_TIMEOUT_SECONDS, ServiceProcess, StartProcess, wait_until

DELIVERY_TIMEOUT_SECONDS = 20.0
UNPAID_TRIPS = range(1001, 1201)  # seeds/README.md: COMPLETED, unpaid, with a total_fare


async def charge(api: httpx.AsyncClient, trip_id: int, **headers: str) -> dict:
    response = await api.post(
        "/v1/payments/charge",
        json={"idempotency_key": f"e2e-notify-{trip_id}", "trip_id": trip_id, "method": "UPI"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def refund(api: httpx.AsyncClient, payment_id: int, amount: float = 1.0) -> dict:
    response = await api.post(
        f"/v1/payments/{payment_id}/refund",
        json={"idempotency_key": f"e2e-notify-refund-{payment_id}", "amount": amount},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def outbox_statuses(engine: AsyncEngine) -> Counter[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT status FROM notification_outbox"))
        return Counter(row.status for row in rows)


def delivered_keys(peers: Sandbox) -> Counter[tuple[str, int, int | None]]:
    """(type, payment_id, refund_id) of every accepted delivery, counted."""
    return Counter(
        (body["type"], body["payment_id"], body.get("refund_id"))
        for body in (entry["body"] for entry in peers.notifications.notifications)
    )


async def test_charge_and_refund_reach_the_notification_service(
    api: httpx.AsyncClient, peers: Sandbox
) -> None:
    """The dispatcher inside `serve` delivers a payment message, then a refund message; the
    request's X-Request-ID reaches the Trip and the Notification service (SPEC §7)."""
    payment = await charge(api, 1001, **{"X-Request-ID": "e2e-notify-charge"})
    assert peers.trips.stats()["last_request_id"] == "e2e-notify-charge"
    payment_id = payment["payment_id"]

    await wait_until(
        lambda: peers.notifications.matching(type="payment", payment_id=payment_id),
        DELIVERY_TIMEOUT_SECONDS,
        "no payment notification",
    )
    (entry,) = peers.notifications.notifications
    assert entry["headers"]["x-request-id"] == "e2e-notify-charge"
    (message,) = peers.notifications.matching(type="payment", payment_id=payment_id)
    assert message["trip_id"] == 1001 and message["status"] == "SUCCESS"
    assert message["amount"] == Decimal(str(payment["amount"]))  # the sink keeps Decimals
    assert message["rider_id"] == payment["rider_id"]
    assert message["driver_id"] == payment["driver_id"]

    refunded = await refund(api, payment_id)
    await wait_until(
        lambda: peers.notifications.matching(type="refund", payment_id=payment_id),
        DELIVERY_TIMEOUT_SECONDS,
        "no refund notification",
    )
    (message,) = peers.notifications.matching(type="refund", payment_id=payment_id)
    assert message["refund_id"] == refunded["refund_id"]
    assert message["status"] == "PARTIALLY_REFUNDED" and message["amount"] == 1
    assert peers.notifications.duplicates == 0


@pytest.mark.service_env(OUTBOX_MAX_ATTEMPTS="1000")
async def test_notification_outage_loses_nothing(
    api: httpx.AsyncClient, peers: Sandbox, e2e_engine: AsyncEngine
) -> None:
    """Notification service down during 10 charges and 5 refunds, then up: each delivered once."""
    await peers.set_fault("notification", "down")
    payments = [await charge(api, trip_id) for trip_id in UNPAID_TRIPS[:10]]
    refunds = [await refund(api, payment["payment_id"]) for payment in payments[:5]]
    # The dispatcher keeps trying (and failing) while the peer is down; nothing is lost.
    await wait_until(
        lambda: _attempted(e2e_engine, 15),
        DELIVERY_TIMEOUT_SECONDS,
        "the dispatcher never tried during the outage",
    )
    assert peers.notifications.notifications == []
    assert (await outbox_statuses(e2e_engine)) == Counter({"PENDING": 15})

    await peers.set_fault("notification", "up")
    expected = {("payment", payment["payment_id"], None) for payment in payments} | {
        ("refund", item["payment_id"], item["refund_id"]) for item in refunds
    }
    await wait_until(
        lambda: set(delivered_keys(peers)) >= expected,
        DELIVERY_TIMEOUT_SECONDS,
        "not every message was delivered after the outage",
    )
    await wait_until(
        lambda: _all_delivered(e2e_engine, 15),
        DELIVERY_TIMEOUT_SECONDS,
        "rows not marked",
    )
    await asyncio.sleep(0.5)  # a redelivery would show up by now
    assert delivered_keys(peers) == Counter(dict.fromkeys(expected, 1))
    assert peers.notifications.duplicates == 0


async def _attempted(engine: AsyncEngine, messages: int) -> bool:
    """Every one of `messages` outbox rows has had at least one failed delivery attempt."""
    async with engine.connect() as connection:
        tried = await connection.scalar(
            text("SELECT count(*) FROM notification_outbox WHERE attempts > 0")
        )
    return tried == messages


async def _all_delivered(engine: AsyncEngine, messages: int) -> bool:
    return await outbox_statuses(engine) == Counter({"DELIVERED": messages})


@pytest.mark.service_env(OUTBOX_ENABLED="false")
async def test_two_worker_processes_never_deliver_a_message_concurrently(
    service: ServiceProcess,
    api: httpx.AsyncClient,
    peers: Sandbox,
    start_process: StartProcess,
    e2e_engine: AsyncEngine,
) -> None:
    """Two `payment-service worker` processes over 40 queued messages, slow peer: each
    delivered, none by both at once."""
    for chunk in range(0, 40, 10):
        await asyncio.gather(
            *(charge(api, trip_id) for trip_id in UNPAID_TRIPS[chunk : chunk + 10])
        )
    assert await outbox_statuses(e2e_engine) == Counter({"PENDING": 40})
    await peers.set_fault("notification", "slow", delay_seconds=0.2)

    # Hold the queue back until both workers run, so they really compete for it.
    await _set_due(e2e_engine, "now() + interval '1 hour'")
    worker_env = dict(service.env, OUTBOX_ENABLED="true", OUTBOX_BATCH_SIZE="5", LOG_LEVEL="INFO")
    workers = [
        await start_process("worker", env=worker_env, name=f"worker-{number}") for number in (1, 2)
    ]
    for worker in workers:
        await wait_until(
            lambda worker=worker: "worker running" in worker.log_text(),
            STARTUP_TIMEOUT_SECONDS,
            f"{worker.name} did not start",
        )
    await _set_due(e2e_engine, "now()")
    await wait_until(
        lambda: _all_delivered(e2e_engine, 40),
        DELIVERY_TIMEOUT_SECONDS,
        "the two workers did not deliver all 40 messages",
        interval=0.1,
    )
    for worker in workers:
        assert await worker.stop() == 0, worker.log_tail()

    assert peers.notifications.concurrent_duplicates == 0
    assert peers.notifications.duplicates == 0
    keys = delivered_keys(peers)
    assert len(keys) == 40 and set(keys.values()) == {1}
    per_worker = [_delivered_by(worker) for worker in workers]
    assert sum(per_worker) == 40 and min(per_worker) > 0, per_worker


async def _set_due(engine: AsyncEngine, when: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"UPDATE notification_outbox SET next_attempt_at = {when}"))


def _delivered_by(worker: ServiceProcess) -> int:
    """How many messages a worker reports delivered in its `outbox batch` log lines."""
    total = 0
    for line in worker.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("message") == "outbox batch":
                total += record["delivered"]
    return total
