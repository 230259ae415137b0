"""Per-client rate limits (SPEC §7a): budgets per scope and key, Redis sharing, fail-open, metrics.

Redis tests use the server on 127.0.0.1:6379 (REDIS_TEST_URL) with a key prefix of their
own, so parallel runs never share counters; they skip when no Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from payment_service.app import create_app
from payment_service.ratelimit import RATE_LIMIT_BACKEND_ERRORS
from payment_service.services.api_keys import create_key
from tests.conftest import make_settings
from tests.integration.test_limits_and_metrics import _sample

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/0")
READ = "/v1/payments?limit=1"

AppClient = Callable[..., Awaitable[httpx.AsyncClient]]


def _redis_answers() -> bool:
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


needs_redis = pytest.mark.skipif(not _redis_answers(), reason=f"no Redis at {REDIS_URL}")


@pytest.fixture
async def limited_app(database_url: str) -> AsyncIterator[AppClient]:
    """Factory: an httpx client over a fresh app with rate limits on (plus overrides)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(client: tuple[str, int] = ("10.0.0.1", 1000), **overrides: Any) -> Any:
            values: dict[str, Any] = {"rate_limit_enabled": True, **overrides}
            application = create_app(make_settings(database_url, **values))
            await stack.enter_async_context(application.router.lifespan_context(application))
            transport = httpx.ASGITransport(app=application, client=client)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://t")
            )

        yield make


async def _key(engine: AsyncEngine, *scopes: str, rate_limit: int | None = None) -> str:
    async with AsyncSession(engine) as session, session.begin():
        created = await create_key(
            session,
            f"limited-{uuid.uuid4().hex[:8]}",
            scopes or ("read",),
            rate_limit_per_minute=rate_limit,
        )
    assert created.key is not None
    return created.key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_over_its_budget_gets_429_with_ratelimit_headers(
    limited_app: AppClient, engine: AsyncEngine
) -> None:
    """A key's own --rate-limit applies; allowed answers count down RateLimit-Remaining and
    the first one over is a 429 problem with Retry-After and RateLimit-*."""
    client = await limited_app(auth_required=True)
    key = await _key(engine, "read", rate_limit=3)
    answers = [await client.get(READ, headers=bearer(key)) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
    assert all(a.headers["RateLimit-Limit"] == "3" for a in answers)
    limited = answers[3]
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["status"] == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(limited.headers["RateLimit-Reset"]) <= 60


async def test_budgets_are_per_client_and_per_scope(
    limited_app: AppClient, engine: AsyncEngine
) -> None:
    """One client exhausting its read budget limits neither another client nor its own
    charges (RATE_LIMIT_READ_PER_MINUTE vs RATE_LIMIT_CHARGE_PER_MINUTE)."""
    client = await limited_app(
        auth_required=True, rate_limit_read_per_minute=2, rate_limit_charge_per_minute=5
    )
    noisy = await _key(engine, "read", "charge")
    quiet = await _key(engine, "read")
    codes = [(await client.get(READ, headers=bearer(noisy))).status_code for _ in range(3)]
    other = await client.get(READ, headers=bearer(quiet))
    # A charge without a body is a 422 after the limiter let it through, not a 429.
    charge = await client.post("/v1/payments/charge", json={}, headers=bearer(noisy))

    assert codes == [200, 200, 429]
    assert other.status_code == 200
    assert charge.status_code == 422
    assert charge.headers["RateLimit-Limit"] == "5"


async def test_callers_without_a_key_are_limited_by_address(limited_app: AppClient) -> None:
    """With AUTH_REQUIRED=false, unauthenticated callers share a budget per address."""
    first = await limited_app(client=("10.9.9.1", 1), rate_limit_read_per_minute=2)
    codes = [(await first.get(READ)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_guessing_keys_is_rate_limited_by_address(limited_app: AppClient) -> None:
    """Unknown keys count against the address's budget before the 401: guessing is limited."""
    client = await limited_app(auth_required=True, rate_limit_read_per_minute=3)
    headers = {"Authorization": "Bearer psk_deadbeef_" + "g" * 43}
    codes = [(await client.get(READ, headers=headers)).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]


async def test_429s_show_in_the_http_metrics_with_their_exact_code(
    limited_app: AppClient,
) -> None:
    """Rejected requests are counted with their exact code: http_requests_total{status="429"}."""
    client = await limited_app(rate_limit_read_per_minute=1)
    await client.get(READ)
    for _ in range(3):
        assert (await client.get(READ)).status_code == 429
    metrics = (await client.get("/metrics")).text

    exact = _sample(
        metrics, "http_requests_total", handler="/v1/payments", method="GET", status="429"
    )
    assert exact == 3


async def test_switched_off_means_no_limit_and_no_headers(limited_app: AppClient) -> None:
    """RATE_LIMIT_ENABLED=false: bursts pass and no RateLimit-* headers are sent."""
    client = await limited_app(rate_limit_enabled=False, rate_limit_read_per_minute=1)
    answers = [await client.get(READ) for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert "RateLimit-Limit" not in answers[-1].headers


@needs_redis
async def test_two_apps_on_one_redis_share_one_budget(
    limited_app: AppClient, engine: AsyncEngine
) -> None:
    """Replicas with the same REDIS_URL draw from one budget: of 40 concurrent requests
    spread over two apps with a budget of 15, exactly 15 succeed.

    A Redis call slower than its 0.25 s timeout fails open by design (the request is
    allowed, `rate_limit_backend_errors_total` counts it); on a machine loaded enough for
    that, the round is repeated with fresh keys, since it then proves nothing either way.
    """
    for _ in range(3):
        errors_before = RATE_LIMIT_BACKEND_ERRORS._value.get()
        prefix = f"test-{uuid.uuid4().hex}"
        shared = {"auth_required": True, "redis_url": REDIS_URL, "redis_key_prefix": prefix}
        first = await limited_app(**shared)
        second = await limited_app(**shared)
        key = await _key(engine, "read", rate_limit=15)

        answers = await asyncio.gather(
            *((first if i % 2 else second).get(READ, headers=bearer(key)) for i in range(40))
        )
        if RATE_LIMIT_BACKEND_ERRORS._value.get() == errors_before:
            break
    else:
        pytest.fail("Redis timed out in every round: the shared budget could not be checked")

    codes = [a.status_code for a in answers]
    assert codes.count(200) == 15 and codes.count(429) == 25


async def test_redis_down_fails_open_with_a_warning_and_a_metric(
    limited_app: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    """REDIS_URL pointing at a closed port: requests still succeed (no 5xx), one warning is
    logged (not one per request) and rate_limit_backend_errors_total counts each failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    client = await limited_app(
        redis_url=f"redis://127.0.0.1:{closed_port}/0", rate_limit_read_per_minute=1
    )
    before = _sample((await client.get("/metrics")).text, "rate_limit_backend_errors_total")
    with caplog.at_level(logging.WARNING, logger="payment_service.ratelimit"):
        codes = [(await client.get(READ)).status_code for _ in range(5)]
    after = _sample((await client.get("/metrics")).text, "rate_limit_backend_errors_total")

    assert codes == [200] * 5
    assert after - before == 5
    warnings = [r for r in caplog.records if "rate-limit storage unavailable" in r.message]
    assert len(warnings) == 1
