"""Crash and outage tests: a real `payment-service serve` with the Stripe adapter against the
sandbox processor over loopback, killed with SIGKILL or cut off from its own PostgreSQL.

Run them alone with `pytest tests/chaos`. Every test ends with `assert_money_invariant`:
for every payment, what the sandbox processor captured minus refunded equals what the
database recorded as charged minus refunded; no PaymentIntent was captured twice; no
capture lacks a payment row; and `payment-service reconcile` reports no difference.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from payment_sandbox.runner import Sandbox
from tests.e2e.conftest import *  # noqa: F403 - the e2e fixtures (processes, databases)
from tests.e2e.conftest import (
    ServiceProcess,
    StartProcess,
    free_port,
    plain_url,
    run_cli,
    service_env,
    wait_until,
)

CAPTURED = ("SUCCESS", "PARTIALLY_REFUNDED", "REFUNDED")
API_KEY = "sk_test_chaos"


@dataclass
class Stack:
    """One serve wired to the sandbox processor, with what a test needs to poke at it."""

    service: ServiceProcess
    peers: Sandbox
    engine: AsyncEngine
    database: URL
    env: dict[str, str]
    webhook_secret: str

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.service.base_url, timeout=timeout)

    async def payment(self, trip_id: int) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            row = (
                (
                    await connection.execute(
                        text("SELECT * FROM payments WHERE trip_id = :t ORDER BY id DESC"),
                        {"t": trip_id},
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def retry_until(
        self, send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]], codes: set[int]
    ) -> httpx.Response:
        """Retry as a well-behaved caller would (same key) until the answer is in `codes`."""
        last: httpx.Response | None = None
        async with self.client() as client:
            for _ in range(120):
                try:
                    last = await send(client)
                except httpx.TransportError:
                    await asyncio.sleep(0.25)
                    continue
                if last.status_code in codes:
                    return last
                await asyncio.sleep(0.25)
        raise AssertionError(f"no answer in {codes}: last {last and last.status_code} {last!r}")


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_stack(peers: Sandbox, start_process: StartProcess) -> AsyncIterator[StartStack]:
    """Factory: `await start_stack(database_url, **env)` -> a healthy serve on the processor."""
    engines: list[AsyncEngine] = []
    secret = f"whsec_{secrets.token_hex(16)}"

    async def start(database: URL, *, name: str = "serve", **extra: str) -> Stack:
        port = free_port()
        peers.processor.webhook_url = f"http://127.0.0.1:{port}/v1/gateway/webhooks/stripe"
        peers.processor.webhook_secret = secret
        defaults = {
            "GATEWAY": "stripe",
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": peers.processor_url,
            "STRIPE_WEBHOOK_SECRET": secret,
            "STRIPE_TIMEOUT_SECONDS": "30",
            "IDEMPOTENCY_LEASE_SECONDS": "2",
            "IDEMPOTENCY_WAIT_SECONDS": "0.5",
            "RECONCILE_ENABLED": "false",
            "OUTBOX_ENABLED": "false",
        }
        env = service_env(database, peers, port, **(defaults | extra))
        service = await start_process("serve", env=env, name=name, port=port, healthy=True)
        engine = create_async_engine(database.set(drivername="postgresql+asyncpg"))
        engines.append(engine)
        return Stack(service, peers, engine, database, env, secret)

    yield start
    peers.processor.webhook_url = None
    peers.processor.webhook_secret = None
    for engine in engines:
        await engine.dispose()


async def assert_replay_is_what_the_caller_saw(
    stack: Stack, path: str, body: dict[str, Any], seen: httpx.Response
) -> None:
    """The stored idempotent answer is the one the caller got: same status, same bytes."""
    async with stack.client() as client:
        again = await client.post(path, json=body)
    assert again.headers.get("Idempotent-Replayed") == "true", again.text
    assert (again.status_code, again.content) == (seen.status_code, seen.content)


async def assert_money_invariant(stack: Stack, tmp_path: Any) -> dict[str, int]:
    """Money the processor holds equals money we recorded, payment by payment."""
    ledger = stack.peers.processor.ledger()["payment_intents"]
    async with stack.engine.connect() as connection:
        rows = (
            (
                await connection.execute(
                    text(
                        "SELECT id, status, amount, refunded_amount FROM payments "
                        "WHERE gateway_idempotency_key IS NOT NULL AND method <> 'CASH'"
                    )
                )
            )
            .mappings()
            .all()
        )
    ours = {row["id"]: row for row in rows}
    by_payment: dict[int, dict[str, Any]] = {}
    for intent in ledger:
        assert intent["capture_count"] <= 1, f"captured twice: {intent}"
        payment_id = int(intent["payment_id"])
        assert payment_id in ours, f"a capture without a payment row: {intent}"
        assert payment_id not in by_payment, f"two PaymentIntents for payment {payment_id}"
        by_payment[payment_id] = intent
    for payment_id, row in ours.items():
        intent = by_payment.get(payment_id, {"captured": 0, "refunded": 0})
        captured = Decimal(intent["captured"]) / 100
        refunded = Decimal(intent["refunded"]) / 100
        charged = row["amount"] if row["status"] in CAPTURED else Decimal("0")
        assert (captured, refunded) == (charged, row["refunded_amount"]), (row, intent)
        assert captured - refunded == charged - row["refunded_amount"]
    result = await run_cli("reconcile", env=stack.env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 differences" in result.stdout, result.stdout
    return {"payments": len(ours), "payment_intents": len(ledger)}


__all__ = [
    "Stack",
    "StartStack",
    "assert_money_invariant",
    "assert_replay_is_what_the_caller_saw",
    "plain_url",
    "wait_until",
]
