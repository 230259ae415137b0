"""Fixtures for money-movement tests: real sandbox peers on loopback and an app wired to them."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from payment_service.app import create_app
from payment_service.sandbox.runner import Sandbox
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
        "trip_service_timeout_seconds": 1.0,
        "idempotency_wait_seconds": 5.0,
        "db_pool_size": 20,
        "db_max_overflow": 20,
    }
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def money_client(database_url: str, peers: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the app, whose Trip/Notification URLs are the sandbox's."""
    application = create_app(money_settings(database_url, peers), run_dispatcher=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
