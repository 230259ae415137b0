"""POST /v1/payments/charge against a real PostgreSQL and a real sandbox Trip service."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from payment_sandbox.trips import synthetic_trip
from payment_service.app import create_app
from tests.integration.conftest import money_settings

CHARGE = "/v1/payments/charge"


async def payments_for_trip(engine: AsyncEngine, trip_id: int) -> list[tuple[int, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, status FROM payments WHERE trip_id = :t ORDER BY id"), {"t": trip_id}
        )
        return [(row.id, row.status) for row in rows]


async def key_count(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(
            text("SELECT count(*) FROM idempotency_keys WHERE key = :k"), {"k": key}
        )


def body(trip_id: int, key: str | None = "key", method: str = "CARD", **extra: object) -> dict:
    payload: dict[str, object] = {"trip_id": trip_id, "method": method, **extra}
    if key is not None:
        payload["idempotency_key"] = key
    return payload


async def test_charge_succeeds_with_the_trip_fare(
    money_client: httpx.AsyncClient,
    new_trip_id: Callable[[], int],
    peers: Sandbox,
    engine: AsyncEngine,
) -> None:
    """A completed trip is charged its fare: 201, Payment fields, message, ids from the trip."""
    trip_id = new_trip_id()
    expected = synthetic_trip(trip_id)
    response = await money_client.post(
        CHARGE, json=body(trip_id, "charge-ok"), headers={"X-Request-ID": "req-charge-ok"}
    )
    assert response.status_code == 201, response.text
    data = response.json()
    assert Decimal(str(data["amount"])) == expected.total_fare
    assert data["status"] == "SUCCESS" and data["method"] == "CARD"
    assert data["rider_id"] == expected.rider_id and data["driver_id"] == expected.driver_id
    assert data["refunded_amount"] == 0 and data["message"]
    assert data["reference"].startswith("RHP")
    assert "Idempotent-Replayed" not in response.headers
    assert peers.trips.stats()["last_request_id"] == "req-charge-ok"
    assert await payments_for_trip(engine, trip_id) == [(data["payment_id"], "SUCCESS")]


async def test_event_and_outbox_are_written_with_the_payment(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """The charge's event and outbox message commit with it."""
    response = await money_client.post(CHARGE, json=body(new_trip_id(), "charge-outbox"))
    payment_id, reference = response.json()["payment_id"], response.json()["reference"]
    async with engine.connect() as connection:
        events = (
            await connection.execute(
                text(
                    "SELECT event_type, to_status FROM payment_events "
                    "WHERE payment_id = :p ORDER BY id"
                ),
                {"p": payment_id},
            )
        ).all()
        outbox = (
            await connection.execute(
                # Other tests enqueue bare messages for arbitrary payment ids: match this payment.
                text(
                    "SELECT message_type, payload FROM notification_outbox "
                    "WHERE payment_id = :p AND payload->>'reference' = :r"
                ),
                {"p": payment_id, "r": reference},
            )
        ).all()
    assert [(e.event_type, e.to_status) for e in events] == [
        ("CHARGE_STARTED", "PROCESSING"),
        ("CHARGE_SUCCESS", "SUCCESS"),
    ]
    assert len(outbox) == 1 and outbox[0].message_type == "payment"
    assert outbox[0].payload["payment_id"] == payment_id
    assert outbox[0].payload["type"] == "payment"


async def test_replay_returns_the_stored_answer(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """Same key, same body: the stored status and body, with Idempotent-Replayed: true."""
    trip_id = new_trip_id()
    first = await money_client.post(CHARGE, json=body(trip_id, "replay-1"))
    second = await money_client.post(CHARGE, json=body(trip_id, "replay-1"))
    assert second.status_code == first.status_code == 201
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(await payments_for_trip(engine, trip_id)) == 1


async def test_key_in_header_is_accepted_and_replayed(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """The Idempotency-Key header works like the body field, and they are interchangeable."""
    trip_id = new_trip_id()
    first = await money_client.post(
        CHARGE, json=body(trip_id, None), headers={"Idempotency-Key": "hdr-1"}
    )
    assert first.status_code == 201
    again = await money_client.post(CHARGE, json=body(trip_id, "hdr-1"))
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["payment_id"] == first.json()["payment_id"]


async def test_body_and_header_keys_that_differ_are_a_400(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """A body key and a different header key is a 400 problem, nothing charged."""
    response = await money_client.post(
        CHARGE, json=body(new_trip_id(), "body-key"), headers={"Idempotency-Key": "other"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_missing_key_is_a_400(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """Without any idempotency key the charge is refused."""
    response = await money_client.post(CHARGE, json=body(new_trip_id(), None))
    assert response.status_code == 400


@pytest.mark.parametrize(
    "payload",
    [
        {"trip_id": 0, "method": "CARD", "idempotency_key": "v"},
        {"trip_id": 1, "method": "BITCOIN", "idempotency_key": "v"},
        {"trip_id": "x", "method": "CARD", "idempotency_key": "v"},
        {"trip_id": 1, "method": "CARD", "idempotency_key": ""},
        {"trip_id": 1, "method": "CARD", "idempotency_key": "k" * 256},
        {"method": "CARD", "idempotency_key": "v"},
    ],
)
async def test_invalid_bodies_are_422_problems(
    money_client: httpx.AsyncClient, payload: dict
) -> None:
    """Schema violations are 422 problem+json listing the fields."""
    response = await money_client.post(CHARGE, json=payload)
    assert response.status_code == 422
    assert response.json()["errors"]


async def test_same_key_different_body_is_a_422(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """Reusing a key for another request is refused with 422."""
    trip_id = new_trip_id()
    assert (await money_client.post(CHARGE, json=body(trip_id, "fp-1"))).status_code == 201
    response = await money_client.post(CHARGE, json=body(trip_id, "fp-1", method="UPI"))
    assert response.status_code == 422
    assert "different request" in response.json()["detail"]


async def test_forty_concurrent_requests_with_one_key_charge_once(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """40 concurrent identical requests: one payment, no 5xx, every success the same body."""
    trip_id = new_trip_id()
    responses = await asyncio.gather(
        *(money_client.post(CHARGE, json=body(trip_id, "burst-1")) for _ in range(40))
    )
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {201, 409}, codes
    assert codes[201] >= 1
    assert len({r.content for r in responses if r.status_code == 201}) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.headers["Retry-After"]
    assert len(await payments_for_trip(engine, trip_id)) == 1


async def test_thirty_keys_for_one_trip_make_one_live_payment(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """30 concurrent charges of one trip with different keys: one payment, the rest 409."""
    trip_id = new_trip_id()
    responses = await asyncio.gather(
        *(money_client.post(CHARGE, json=body(trip_id, f"trip-race-{i}")) for i in range(30))
    )
    codes = Counter(r.status_code for r in responses)
    assert codes[201] == 1 and codes[409] == 29, codes
    winner = next(r for r in responses if r.status_code == 201).json()["payment_id"]
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.json()["payment_id"] == winner
    assert await payments_for_trip(engine, trip_id) == [(winner, "SUCCESS")]


async def test_a_paid_trip_is_a_409_naming_the_payment(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """Charging a paid trip with a new key names the existing payment; the key is not kept."""
    trip_id = new_trip_id()
    first = (await money_client.post(CHARGE, json=body(trip_id, "paid-1"))).json()
    response = await money_client.post(CHARGE, json=body(trip_id, "paid-2"))
    assert response.status_code == 409
    assert response.json()["payment_id"] == first["payment_id"]
    assert str(first["payment_id"]) in response.json()["detail"]
    assert await key_count(engine, "paid-2") == 0


async def test_seeded_paid_trip_is_a_409(
    money_client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """A trip paid in the seed (trip 336 has payment 1, a SUCCESS) cannot be charged again."""
    response = await money_client.post(CHARGE, json=body(336, "seeded-paid"))
    assert response.status_code == 409


async def test_declined_charge_is_stored_and_the_trip_can_be_retried(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """A FAILED charge is 202 and replays as FAILED; a new key may charge the trip again."""
    trip_id = new_trip_id()
    declined = await money_client.post(
        CHARGE, json=body(trip_id, "decl-1", metadata={"simulate": "decline"})
    )
    assert declined.status_code == 202 and declined.json()["status"] == "FAILED"
    replay = await money_client.post(
        CHARGE, json=body(trip_id, "decl-1", metadata={"simulate": "decline"})
    )
    assert replay.status_code == 202 and replay.json()["status"] == "FAILED"
    assert replay.headers["Idempotent-Replayed"] == "true"
    retry = await money_client.post(CHARGE, json=body(trip_id, "decl-2"))
    assert retry.status_code == 201
    assert [s for _, s in await payments_for_trip(engine, trip_id)] == ["FAILED", "SUCCESS"]


async def test_pending_charge_is_202(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """A PENDING outcome answers 202 with status PENDING."""
    response = await money_client.post(
        CHARGE, json=body(new_trip_id(), "pend-1", metadata={"simulate": "pending"})
    )
    assert response.status_code == 202 and response.json()["status"] == "PENDING"


async def test_cash_is_always_successful(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """CASH succeeds even when a decline is asked for."""
    response = await money_client.post(
        CHARGE, json=body(new_trip_id(), "cash-1", method="CASH", metadata={"simulate": "decline"})
    )
    assert response.status_code == 201 and response.json()["status"] == "SUCCESS"


async def test_rider_mismatch_is_a_422(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """A rider_id that differs from the trip's is refused."""
    trip_id = new_trip_id()
    rider = synthetic_trip(trip_id).rider_id
    response = await money_client.post(CHARGE, json=body(trip_id, "rider-x", rider_id=rider + 1))
    assert response.status_code == 422
    ok = await money_client.post(CHARGE, json=body(trip_id, "rider-ok", rider_id=rider))
    assert ok.status_code == 201


async def test_unknown_trip_is_a_422_and_the_key_works_later(
    money_client: httpx.AsyncClient, peers: Sandbox, engine: AsyncEngine
) -> None:
    """Trip 404 -> 422 "trip not found", nothing stored; once the trip exists the key succeeds."""
    trip_id = random.randrange(800_000, 999_999)  # unknown to the Trip service until PUT
    response = await money_client.post(CHARGE, json=body(trip_id, "late-trip"))
    assert response.status_code == 422 and "not found" in response.json()["detail"]
    assert await key_count(engine, "late-trip") == 0
    assert await payments_for_trip(engine, trip_id) == []
    async with httpx.AsyncClient(base_url=peers.trip_url) as trips:
        created = await trips.put(
            f"/v1/trips/{trip_id}",
            json={
                "rider_id": 1,
                "driver_id": 2,
                "status": "COMPLETED",
                "distance_km": 10,
                "base_fare": 5,
                "surge_multiplier": 1,
                "total_fare": 30.25,
            },
        )
        assert created.status_code in (200, 201), created.text
    retry = await money_client.post(CHARGE, json=body(trip_id, "late-trip"))
    assert retry.status_code == 201 and retry.json()["amount"] == 30.25


async def test_trip_not_completed_is_a_422(
    money_client: httpx.AsyncClient, peers: Sandbox, engine: AsyncEngine
) -> None:
    """An ONGOING trip cannot be charged; after it completes the same key charges it."""
    trip_id = random.randrange(800_000, 999_999)
    async with httpx.AsyncClient(base_url=peers.trip_url) as trips:
        trip = {
            "rider_id": 1,
            "driver_id": 2,
            "status": "ONGOING",
            "distance_km": 12.3,
            "base_fare": 5,
            "surge_multiplier": 1.5,
            "total_fare": None,
        }
        await trips.put(f"/v1/trips/{trip_id}", json=trip)
        response = await money_client.post(CHARGE, json=body(trip_id, "ongoing"))
        assert response.status_code == 422 and "not completed" in response.json()["detail"]
        assert await payments_for_trip(engine, trip_id) == []
        await trips.put(f"/v1/trips/{trip_id}", json=trip | {"status": "COMPLETED"})
    retry = await money_client.post(CHARGE, json=body(trip_id, "ongoing"))
    assert retry.status_code == 201
    assert retry.json()["amount"] == 53.63  # (5 + 12.3 * 2.5) * 1.5 = 53.625, half-up


@pytest.mark.parametrize("fault", ["down", "fail", "slow"])
async def test_trip_service_failure_is_a_503_and_nothing_is_stored(
    money_client: httpx.AsyncClient,
    peers: Sandbox,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
    fault: str,
) -> None:
    """Trip service down / 500 / slower than the timeout: 503 + Retry-After, then it works."""
    trip_id = new_trip_id()
    key = f"trip-{fault}"
    await peers.set_fault("trip", fault, delay_seconds=3.0 if fault == "slow" else None)
    response = await money_client.post(CHARGE, json=body(trip_id, key))
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert response.headers["content-type"] == "application/problem+json"
    assert await payments_for_trip(engine, trip_id) == []
    assert await key_count(engine, key) == 0
    await peers.set_fault("trip", "up")
    retry = await money_client.post(CHARGE, json=body(trip_id, key))
    assert retry.status_code == 201


async def test_one_trip_service_blip_is_retried(
    money_client: httpx.AsyncClient, peers: Sandbox, new_trip_id: Callable[[], int]
) -> None:
    """A single 500 from the Trip service is absorbed by the bounded retry."""
    await peers.set_fault("trip", "flaky", count=1)
    response = await money_client.post(CHARGE, json=body(new_trip_id(), "blip"))
    assert response.status_code == 201


async def test_in_flight_key_from_a_crashed_process_is_taken_over_after_its_lease(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """An IN_PROGRESS key whose lease has expired is taken over and the charge completes."""
    trip_id = new_trip_id()
    payload = body(trip_id, "crashed")
    # Plant the key a crashed process would leave: same fingerprint, expired lease.
    from payment_service.services.idempotency import fingerprint

    fp = fingerprint({"trip_id": trip_id, "method": "CARD"})
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, "
                "lease_token, locked_until, expires_at) VALUES ('charge', 'default', 'crashed', "
                ":fp, 'IN_PROGRESS', 'dead-process', now() - interval '1 second', "
                "now() + interval '1 day')"
            ),
            {"fp": fp},
        )
    response = await money_client.post(CHARGE, json=payload)
    assert response.status_code == 201, response.text
    assert len(await payments_for_trip(engine, trip_id)) == 1


async def test_in_flight_key_with_a_live_lease_is_a_409_with_retry_after(
    database_url: str, peers: Sandbox, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """While another request holds the key's lease, a twin waits briefly then gets 409."""
    trip_id = new_trip_id()
    from payment_service.services.idempotency import fingerprint

    fp = fingerprint({"trip_id": trip_id, "method": "CARD"})
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, "
                "lease_token, locked_until, expires_at) VALUES ('charge', 'default', 'held', "
                ":fp, 'IN_PROGRESS', 'other-process', now() + interval '1 minute', "
                "now() + interval '1 day')"
            ),
            {"fp": fp},
        )
    app = create_app(
        money_settings(database_url, peers, idempotency_wait_seconds=0.2), run_dispatcher=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(CHARGE, json=body(trip_id, "held"))
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert await payments_for_trip(engine, trip_id) == []


async def test_expired_key_is_treated_as_new(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """A key past its 24 h TTL no longer binds: it may be used for another request."""
    first_trip, second_trip = new_trip_id(), new_trip_id()
    assert (await money_client.post(CHARGE, json=body(first_trip, "old-key"))).status_code == 201
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 hour' "
                "WHERE key = 'old-key'"
            )
        )
    response = await money_client.post(CHARGE, json=body(second_trip, "old-key"))
    assert response.status_code == 201
    assert response.json()["trip_id"] == second_trip


async def test_purge_deletes_only_expired_keys(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int], engine: AsyncEngine
) -> None:
    """purge-idempotency-keys removes expired keys and keeps live ones."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from payment_service.services.idempotency import purge_expired

    await money_client.post(CHARGE, json=body(new_trip_id(), "purge-old"))
    await money_client.post(CHARGE, json=body(new_trip_id(), "purge-live"))
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 hour' "
                "WHERE key = 'purge-old'"
            )
        )
    async with AsyncSession(engine) as session, session.begin():
        purged = await purge_expired(session)
    assert purged >= 1
    assert await key_count(engine, "purge-old") == 0
    assert await key_count(engine, "purge-live") == 1


async def test_amounts_are_json_numbers(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """Money is written as a JSON number with at most two decimals."""
    response = await money_client.post(CHARGE, json=body(new_trip_id(), "json-num"))
    raw = json.loads(response.text, parse_float=Decimal)
    assert isinstance(raw["amount"], Decimal)
    assert -raw["amount"].as_tuple().exponent <= 2


async def test_unknown_body_fields_are_ignored(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """An old client's extra fields (e.g. an amount) are ignored: the fare comes from the trip."""
    trip_id = new_trip_id()
    response = await money_client.post(
        CHARGE, json=body(trip_id, "extras", amount=1.00, currency="USD")
    )
    assert response.status_code == 201
    assert Decimal(str(response.json()["amount"])) == synthetic_trip(trip_id).total_fare
    replay = await money_client.post(CHARGE, json=body(trip_id, "extras"))
    assert replay.headers["Idempotent-Replayed"] == "true"
