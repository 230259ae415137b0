"""`serve` killed mid-request or stopped by SIGTERM: nothing is charged twice or lost."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from tests.e2e.conftest import ServiceProcess, wait_until

CHARGE = "/v1/payments/charge"
LEASE_SECONDS = 2.0


async def payments_for_trip(engine: AsyncEngine, trip_id: int) -> list[tuple[int, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, status FROM payments WHERE trip_id = :t ORDER BY id"), {"t": trip_id}
        )
        return [(row.id, row.status) for row in rows]


async def key_state(engine: AsyncEngine, key: str) -> str | None:
    async with engine.connect() as connection:
        return await connection.scalar(
            text("SELECT state FROM idempotency_keys WHERE key = :k"), {"k": key}
        )


@pytest.mark.service_env(
    IDEMPOTENCY_LEASE_SECONDS=str(LEASE_SECONDS), TRIP_SERVICE_TIMEOUT_SECONDS="10"
)
async def test_key_left_in_flight_by_a_killed_process_is_taken_over_after_its_lease(
    service: ServiceProcess, peers: Sandbox, e2e_engine: AsyncEngine
) -> None:
    """SIGKILL mid-charge leaves the key in flight; after a restart the same key is refused with
    Retry-After or succeeds, succeeds once the lease is over, and the trip is charged once."""
    trip_id, key = 1003, "e2e-lease-takeover"
    body = {"idempotency_key": key, "trip_id": trip_id, "method": "CARD"}
    await peers.set_fault("trip", "slow", delay_seconds=5)

    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        in_flight = asyncio.create_task(client.post(CHARGE, json=body))
        await wait_until(
            lambda: peers.trips.get_requests_for(trip_id) >= 1,
            15,
            "the charge never reached the Trip service",
        )
        service.kill()
        with pytest.raises(httpx.TransportError):
            await in_flight
    assert await key_state(e2e_engine, key) == "IN_PROGRESS"
    assert await payments_for_trip(e2e_engine, trip_id) == []

    await service.restart()
    await peers.set_fault("trip", "up")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        retry = await client.post(CHARGE, json=body)
        assert retry.status_code in (201, 409), retry.text
        if retry.status_code == 409:
            assert int(retry.headers["Retry-After"]) >= 1
            assert retry.headers["content-type"].startswith("application/problem+json")

        await asyncio.sleep(LEASE_SECONDS + 0.5)
        after_lease = await client.post(CHARGE, json=body)
        assert after_lease.status_code == 201, after_lease.text
        assert after_lease.json()["trip_id"] == trip_id
        if retry.status_code == 201:
            assert after_lease.headers["Idempotent-Replayed"] == "true"
            assert after_lease.content == retry.content

    payments = await payments_for_trip(e2e_engine, trip_id)
    assert payments == [(after_lease.json()["payment_id"], "SUCCESS")]
    assert await key_state(e2e_engine, key) == "COMPLETED"


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    service: ServiceProcess, peers: Sandbox, e2e_engine: AsyncEngine
) -> None:
    """SIGTERM during a charge: the charge still answers 201, then serve exits 0 within seconds."""
    trip_id = 1004
    await peers.set_fault("trip", "slow", delay_seconds=1.0)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        body = {"idempotency_key": "e2e-sigterm", "trip_id": trip_id, "method": "CASH"}
        in_flight = asyncio.create_task(client.post(CHARGE, json=body))
        await wait_until(
            lambda: peers.trips.get_requests_for(trip_id) >= 1,
            15,
            "the charge never reached the Trip service",
        )
        started = time.monotonic()
        service.send_signal(signal.SIGTERM)
        response = await in_flight
    assert response.status_code == 201, response.text

    code = await service.wait_exit(8.0)
    assert code == 0, f"serve exited with {code} ({time.monotonic() - started:.1f} s after SIGTERM)"
    assert "Traceback" not in service.log_text()
    assert [status for _, status in await payments_for_trip(e2e_engine, trip_id)] == ["SUCCESS"]
