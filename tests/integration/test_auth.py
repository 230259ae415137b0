"""API keys (SPEC §7a): who may call what, per-client idempotency, audit, and the key cache."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from payment_sandbox.runner import Sandbox
from payment_service.app import create_app
from payment_service.auth.caller import current_caller
from payment_service.services.api_keys import create_key, revoke_keys
from tests.conftest import insert_payment, make_settings
from tests.integration.conftest import money_settings

CHARGE = "/v1/payments/charge"

MakeKey = Callable[..., Awaitable[str]]
AuthClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def make_key(engine: AsyncEngine) -> MakeKey:
    """Create a client with a fresh name and return its new key."""

    async def make(*scopes: str, name: str | None = None, rate_limit: int | None = None) -> str:
        async with AsyncSession(engine) as session, session.begin():
            created = await create_key(
                session,
                name or f"client-{uuid.uuid4().hex[:8]}",
                scopes or ("read", "charge", "refund"),
                rate_limit_per_minute=rate_limit,
            )
        assert created.key is not None
        return created.key

    return make


@pytest.fixture
async def auth_app(database_url: str, peers: Sandbox) -> AsyncIterator[AuthClient]:
    """Factory: an httpx client over an app with AUTH_REQUIRED=true (and any overrides)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> httpx.AsyncClient:
            values: dict[str, Any] = {"auth_required": True, **overrides}
            application = create_app(money_settings(database_url, peers, **values))
            await stack.enter_async_context(application.router.lifespan_context(application))
            transport = httpx.ASGITransport(app=application)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        yield make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _paid_payment(engine: AsyncEngine) -> int:
    async with AsyncSession(engine) as session, session.begin():
        return await insert_payment(session)


async def test_anonymous_refund_is_a_401_with_www_authenticate(
    auth_app: AuthClient, engine: AsyncEngine
) -> None:
    """The attack: a refund without a key. Now a 401 problem, and nothing is refunded."""
    client = await auth_app()
    payment_id = await _paid_payment(engine)

    response = await client.post(
        f"/v1/payments/{payment_id}/refund",
        json={"idempotency_key": "anon-1", "reason": "anonymous"},
    )

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401
    async with engine.connect() as connection:
        refunded = await connection.scalar(
            text("SELECT refunded_amount FROM payments WHERE id = :id"), {"id": payment_id}
        )
    assert refunded == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/payments?limit=500"),
        ("GET", "/v1/payments/1"),
        ("GET", "/v1/payments/1/refunds"),
        ("GET", "/v1/payments/1/receipt"),
        ("POST", CHARGE),
    ],
)
async def test_every_v1_route_needs_a_key(auth_app: AuthClient, method: str, path: str) -> None:
    """Listing riders and drivers, reading and charging without a key are 401s."""
    client = await auth_app()
    response = await client.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 401, response.text
    assert "Bearer" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Bearer psk_00000000_" + "x" * 43, "Bearer not-a-key", "Basic dXNlcjpwYXNz", "Bearer"],
)
async def test_unknown_or_malformed_keys_are_401(auth_app: AuthClient, header: str) -> None:
    """Made-up keys, other schemes and empty credentials never get through."""
    client = await auth_app()
    response = await client.get("/v1/payments?limit=1", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path", ["/health", "/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"]
)
async def test_operational_routes_stay_open(auth_app: AuthClient, path: str) -> None:
    """Probes, metrics and the docs answer without a key."""
    client = await auth_app()
    assert (await client.get(path)).status_code == 200


async def test_read_key_reads_but_cannot_charge_or_refund(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    """A read-only key lists payments (200) and gets 403 problems for charge and refund."""
    client = await auth_app()
    key = await make_key("read")
    payment_id = await _paid_payment(engine)

    listed = await client.get("/v1/payments?limit=5", headers=bearer(key))
    charged = await client.post(
        CHARGE,
        json={"idempotency_key": "ro-1", "trip_id": new_trip_id(), "method": "CARD"},
        headers=bearer(key),
    )
    refunded = await client.post(
        f"/v1/payments/{payment_id}/refund", json={"idempotency_key": "ro-2"}, headers=bearer(key)
    )

    assert listed.status_code == 200
    assert charged.status_code == 403 and refunded.status_code == 403
    assert charged.headers["content-type"] == "application/problem+json"
    assert "charge" in charged.json()["detail"]


async def test_charge_key_charges_and_the_event_records_the_actor(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    """A charge-scoped key charges; the payment's events name its client as `actor`."""
    client = await auth_app()
    name = f"trip-service-{uuid.uuid4().hex[:6]}"
    key = await make_key("charge", name=name)
    trip = new_trip_id()
    response = await client.post(
        CHARGE,
        json={"idempotency_key": f"k-{trip}", "trip_id": trip, "method": "CARD"},
        headers=bearer(key),
    )
    assert response.status_code == 201, response.text

    async with engine.connect() as connection:
        actors = set(
            (
                await connection.execute(
                    text("SELECT actor FROM payment_events WHERE payment_id = :id"),
                    {"id": response.json()["payment_id"]},
                )
            ).scalars()
        )
    assert actors == {name}


async def test_revoked_key_is_refused_within_the_cache_ttl(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine
) -> None:
    """After `revoke`, a cached key keeps working at most API_KEY_CACHE_SECONDS, then 401."""
    ttl = 1.0
    client = await auth_app(api_key_cache_seconds=ttl)
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    key = await make_key("read", name=name)
    assert (await client.get("/v1/payments?limit=1", headers=bearer(key))).status_code == 200

    async with AsyncSession(engine) as session, session.begin():
        assert await revoke_keys(session, name) == 1
    revoked_at = time.monotonic()
    while (await client.get("/v1/payments?limit=1", headers=bearer(key))).status_code == 200:
        assert time.monotonic() - revoked_at < ttl + 1.0, "revoked key still accepted"
        await asyncio.sleep(0.05)
    assert time.monotonic() - revoked_at <= ttl + 1.0
    again = await client.get("/v1/payments?limit=1", headers=bearer(key))
    assert again.status_code == 401 and "Bearer" in again.headers["WWW-Authenticate"]


async def test_key_lookups_are_cached(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine
) -> None:
    """Within the TTL a key is not looked up again: its last_used_at is written once."""
    client = await auth_app(api_key_cache_seconds=60)
    name = f"cached-{uuid.uuid4().hex[:6]}"
    key = await make_key("read", name=name)
    await client.get("/health")
    for _ in range(5):
        assert (await client.get("/v1/payments?limit=1", headers=bearer(key))).status_code == 200
    async with engine.connect() as connection:
        first = await connection.scalar(
            text(
                "SELECT k.last_used_at FROM api_keys k JOIN api_clients c ON c.id = k.client_id "
                "WHERE c.name = :name"
            ),
            {"name": name},
        )
        # Dropping the row would break any lookup that still went to the database.
        await connection.execute(
            text(
                "UPDATE api_keys SET last_used_at = NULL WHERE client_id = "
                "(SELECT id FROM api_clients WHERE name = :name)"
            ),
            {"name": name},
        )
        await connection.commit()
        assert first is not None
    assert (await client.get("/v1/payments?limit=1", headers=bearer(key))).status_code == 200
    async with engine.connect() as connection:
        after = await connection.scalar(
            text(
                "SELECT k.last_used_at FROM api_keys k JOIN api_clients c ON c.id = k.client_id "
                "WHERE c.name = :name"
            ),
            {"name": name},
        )
    assert after is None


async def test_same_idempotency_key_from_two_clients_makes_two_payments(
    auth_app: AuthClient, make_key: MakeKey, new_trip_id: Callable[[], int]
) -> None:
    """The attack: knowing another client's key string replayed its answer. Now each
    client's keys are its own: the same string makes two independent payments."""
    client = await auth_app()
    alice, bob = await make_key("charge"), await make_key("charge")
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    first = await client.post(
        CHARGE,
        json={"idempotency_key": shared, "trip_id": new_trip_id(), "method": "CARD"},
        headers=bearer(alice),
    )
    second = await client.post(
        CHARGE,
        json={"idempotency_key": shared, "trip_id": new_trip_id(), "method": "UPI"},
        headers=bearer(bob),
    )
    replay = await client.post(
        CHARGE,
        json={"idempotency_key": shared, "trip_id": first.json()["trip_id"], "method": "CARD"},
        headers=bearer(alice),
    )

    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert "Idempotent-Replayed" not in second.headers
    assert first.json()["payment_id"] != second.json()["payment_id"]
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["payment_id"] == first.json()["payment_id"]


async def test_same_refund_key_from_two_clients_is_two_refunds(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine
) -> None:
    """A refund key of one client never answers another client's refund with that key."""
    client = await auth_app()
    alice, bob = await make_key("refund"), await make_key("refund")
    payment_id = await _paid_payment(engine)
    body = {"idempotency_key": "refund-shared", "amount": 1}
    first = await client.post(f"/v1/payments/{payment_id}/refund", json=body, headers=bearer(alice))
    second = await client.post(f"/v1/payments/{payment_id}/refund", json=body, headers=bearer(bob))

    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert "Idempotent-Replayed" not in second.headers
    assert first.json()["refund_id"] != second.json()["refund_id"]
    assert Decimal(str(second.json()["remaining_refundable"])) == Decimal("8.50")


async def test_without_auth_callers_are_the_default_client_or_their_key(
    database_url: str, peers: Sandbox, make_key: MakeKey
) -> None:
    """AUTH_REQUIRED=false: no key is the default client; a key still identifies its
    client, and a bad key is still a 401 (a client bug, not anonymity)."""
    seen: list[Any] = []
    application = create_app(money_settings(database_url, peers, auth_required=False))

    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            anonymous = await client.get("/v1/payments?limit=1")
            key = await make_key("read")
            keyed = await client.get("/v1/payments?limit=1", headers=bearer(key))
            bad = await client.get("/v1/payments?limit=1", headers=bearer("psk_1_nope"))
            seen.append(current_caller())
    assert anonymous.status_code == 200 and keyed.status_code == 200
    assert bad.status_code == 401
    assert seen == [None]  # nothing leaks out of a request


async def test_openapi_declares_the_bearer_scheme_and_each_scope(auth_app: AuthClient) -> None:
    """openapi.json has an HTTP bearer scheme; each /v1 operation names its scope and 401
    (processor webhooks are signed instead, and stay open)."""
    client = await auth_app()
    document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    scopes = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/") and not path.startswith("/v1/gateway/webhooks/"):
                assert operation["security"], (method, path)
                assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
                scopes[(method, path)] = operation["x-required-scope"]
            else:
                assert "security" not in operation, (method, path)
    assert scopes[("post", CHARGE)] == "charge"
    assert scopes[("post", "/v1/payments/{payment_id}/refund")] == "refund"
    assert scopes[("get", "/v1/payments")] == "read"
    assert scopes[("get", "/v1/payments/{payment_id}/refunds")] == "read"


async def test_concurrent_retries_of_one_key_string_by_two_clients(
    auth_app: AuthClient, make_key: MakeKey, engine: AsyncEngine, new_trip_id: Callable[[], int]
) -> None:
    """Ten concurrent retries each from two clients with one key string: one payment per
    client, and every answer a client gets is about its own payment."""
    client = await auth_app()
    keys = [await make_key("charge"), await make_key("charge")]
    trips = [new_trip_id(), new_trip_id()]
    shared = f"race-{uuid.uuid4().hex[:8]}"

    async def charge(i: int) -> tuple[int, httpx.Response]:
        who = i % 2
        body = {"idempotency_key": shared, "trip_id": trips[who], "method": "CARD"}
        return who, await client.post(CHARGE, json=body, headers=bearer(keys[who]))

    answers = await asyncio.gather(*(charge(i) for i in range(20)))

    payments: dict[int, set[int]] = {0: set(), 1: set()}
    for who, response in answers:
        assert response.status_code in (201, 409), response.text
        if response.status_code == 201:
            assert response.json()["trip_id"] == trips[who]
            payments[who].add(response.json()["payment_id"])
    assert all(len(ids) == 1 for ids in payments.values()), payments
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM payments WHERE trip_id = ANY(:trips)"), {"trips": trips}
        )
    assert count == 2


async def test_key_lookup_with_the_database_down_is_a_503(make_key: MakeKey) -> None:
    """An uncached key while the database is unreachable: 503 with Retry-After, not a 500
    and not a 401 (the key may well be valid)."""

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    application = create_app(
        make_settings(
            f"postgresql://postgres@127.0.0.1:{closed}/nowhere",
            auth_required=True,
            db_connect_timeout_seconds=1,
        )
    )
    key = await make_key("read")
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/v1/payments?limit=1", headers=bearer(key))
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert response.headers["content-type"] == "application/problem+json"
