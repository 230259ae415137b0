"""Fixtures for money-movement tests: real sandbox peers on loopback and an app wired to them."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from payment_sandbox.runner import Sandbox
from payment_service.app import create_app
from payment_service.settings import Settings
from tests.conftest import make_settings

_trip_ids = itertools.count(random.randrange(1_000_000, 900_000_000, 1000))


@pytest.fixture
def new_trip_id() -> Callable[[], int]:
    """Fresh synthetic COMPLETED trip ids (>= 1,000,000), unique across the session."""
    return lambda: next(_trip_ids)


def money_settings(database_url: str, sandbox: Sandbox, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "trip_service_url": sandbox.trip_url,
        "notification_service_url": sandbox.notification_url,
        # The production default. 1.0 s failed a plain charge once in a clean-clone CI
        # run (the sandbox, in this process's event loop, answered too late); the slow
        # fault tests still outwait it (3 s).
        "trip_service_timeout_seconds": 2.0,
        "idempotency_wait_seconds": 5.0,
        "db_pool_size": 20,
        "db_max_overflow": 20,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture(params=["simulator", "stripe"])
async def money_client(
    request: pytest.FixtureRequest, database_url: str, peers: Sandbox
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the app, whose Trip/Notification URLs are the sandbox's.

    Every money test runs twice: with the in-process simulator, and with the Stripe
    adapter against the sandbox processor over loopback (which must then never have
    captured a PaymentIntent twice).
    """
    # Both runs of a test send the same idempotency key strings: start each without keys.
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM idempotency_keys"))
    await engine.dispose()
    overrides: dict[str, Any] = {}
    if request.param == "stripe":
        overrides = {
            "gateway": "stripe",
            "stripe_api_key": "sk_test_integration",
            "stripe_api_base": peers.processor_url,
        }
    application = create_app(
        money_settings(database_url, peers, **overrides),
        run_dispatcher=False,
        run_reconciler=False,
    )
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
    if request.param == "stripe":
        for intent in peers.processor.ledger()["payment_intents"]:
            assert intent["capture_count"] <= 1, intent
