"""The outbox dispatcher against a real PostgreSQL and a real sandbox Notification service."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from standardwebhooks import Webhook

from payment_sandbox import Sandbox, SandboxConfig, build_sandbox
from payment_service.db import create_engine, create_session_factory
from payment_service.jsonutil import dumps, loads
from payment_service.models import OutboxMessage
from payment_service.observability import (
    OUTBOX_DELIVERED,
    OUTBOX_DELIVERY_FAILURES,
    OUTBOX_PENDING,
)
from payment_service.repositories.outbox import FailedAttempt, OutboxRepository
from payment_service.settings import Settings
from payment_service.worker.dispatcher import OutboxDispatcher
from tests.conftest import insert_payment, make_settings

SessionFactory = async_sessionmaker[AsyncSession]
WAIT_SECONDS = 10.0


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
async def outbox_peers() -> AsyncIterator[Sandbox]:
    """Sandbox peers on free loopback ports, for this module."""
    config = SandboxConfig(
        trip_port=0,
        notification_port=0,
        processor_port=0,
        control_port=0,
        trips_file=None,
        delay_seconds=0.05,
        log_level=None,
    )
    async with build_sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
async def peer(outbox_peers: Sandbox, empty_db: AsyncEngine) -> Sandbox:
    """Every peer up and normal, nothing received, and an empty outbox."""
    await outbox_peers.reset()
    return outbox_peers


@pytest.fixture
def outbox_settings(database_url: str, peer: Sandbox) -> Callable[..., Settings]:
    """Settings pointing at the sandbox, with fast polling and tiny backoff."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "notification_service_url": peer.notification_url,
            "notification_timeout_seconds": 2.0,
            "outbox_poll_interval_seconds": 0.02,
            "outbox_backoff_base_seconds": 0.01,
            "outbox_backoff_max_seconds": 0.05,
            "outbox_batch_size": 10,
        }
        values.update(overrides)
        return make_settings(database_url, **values)

    return build


@pytest.fixture
async def factories(database_url: str) -> AsyncIterator[Callable[..., SessionFactory]]:
    """Session factories on engines of their own (the app's JSON codec: exact Decimals)."""
    engines: list[AsyncEngine] = []

    def new_factory(**overrides: object) -> SessionFactory:
        engine = create_engine(make_settings(database_url, **overrides), make_url(database_url))
        engines.append(engine)
        return create_session_factory(engine)

    yield new_factory
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    """The test's own sessions, for enqueueing and inspecting rows.

    Its connections are named `outbox-test`, not `payment-service` like the
    dispatchers', so a test can kill the dispatchers' connections alone.
    """
    engine = create_async_engine(
        make_url(database_url),
        json_serializer=lambda value: dumps(value).decode("utf-8"),
        json_deserializer=loads,
        connect_args={"server_settings": {"application_name": "outbox-test"}},
    )
    yield create_session_factory(engine)
    await engine.dispose()


# -- helpers ------------------------------------------------------------------


def payload(payment_id: int) -> dict[str, Any]:
    return {
        "type": "payment",
        "event": "payment.success",
        "payment_id": payment_id,
        "trip_id": 1000 + payment_id,
        "rider_id": 7,
        "driver_id": 9,
        "status": "SUCCESS",
        "amount": Decimal("99.01"),
        "currency": "INR",
    }


async def enqueue(sessions: SessionFactory, count: int) -> list[int]:
    """Commit `count` outbox messages; returns their ids, oldest first."""
    async with sessions() as session, session.begin():
        repository = OutboxRepository(session)
        last = select(func.coalesce(func.max(OutboxMessage.id), 0))
        before = (await session.execute(last)).scalar_one()
        for _ in range(count):
            payment_id = await insert_payment(session)  # outbox rows reference real payments
            await repository.enqueue("payment", payment_id, payload(payment_id))
        ids = (
            await session.execute(
                select(OutboxMessage.id).where(OutboxMessage.id > before).order_by(OutboxMessage.id)
            )
        ).scalars()
        return list(ids)


async def rows(sessions: SessionFactory) -> dict[int, OutboxMessage]:
    async with sessions() as session:
        result = await session.execute(select(OutboxMessage).order_by(OutboxMessage.id))
        return {row.id: row for row in result.scalars()}


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_SECONDS
) -> None:
    """Poll `condition` until it holds, failing after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def all_in_status(sessions: SessionFactory, ids: list[int], status: str) -> bool:
    current = await rows(sessions)
    return all(current[message_id].status == status for message_id in ids)


def received_ids(peer: Sandbox) -> list[int]:
    return sorted(entry["body"]["message_id"] for entry in peer.notifications.notifications)


class CountingTransport(httpx.AsyncHTTPTransport):
    """A real transport that counts the requests one dispatcher sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await super().handle_async_request(request)


def counter(metric: Any) -> float:
    return metric._value.get()


# -- tests --------------------------------------------------------------------


async def test_run_once_delivers_and_marks_messages(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """One batch POSTs every due message with its key and request id, then marks it DELIVERED."""
    ids = await enqueue(sessions, 3)
    delivered_before = counter(OUTBOX_DELIVERED)
    dispatcher = OutboxDispatcher(outbox_settings(), sessions)

    assert await dispatcher.run_once() == 3
    assert OUTBOX_PENDING._value.get() == 3  # counted when the batch was claimed

    current = await rows(sessions)
    for message_id in ids:
        row = current[message_id]
        assert row.status == "DELIVERED"
        assert row.attempts == 1
        assert row.delivered_at is not None
        assert row.last_error is None
    assert counter(OUTBOX_DELIVERED) - delivered_before == 3

    entries = peer.notifications.notifications
    assert received_ids(peer) == ids
    for entry in entries:
        body, headers = entry["body"], entry["headers"]
        event_id = str(current[body["message_id"]].event_id)
        assert headers["idempotency-key"] == headers["webhook-id"] == body["event_id"] == event_id
        assert headers["webhook-timestamp"]
        assert headers["webhook-signature"] is None  # no NOTIFICATION_SIGNING_SECRET: unsigned
        assert headers["x-request-id"]
        assert body["amount"] == Decimal("99.01")  # exact, never through float
        assert body["type"] == "payment"
    assert len({entry["headers"]["x-request-id"] for entry in entries}) == 3

    assert await dispatcher.run_once() == 0
    assert OUTBOX_PENDING._value.get() == 0


async def test_notification_service_down_then_up_delivers_each_message_once(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """While the peer refuses connections nothing is lost; once it is back, each arrives once."""
    await peer.down("notification")
    ids = await enqueue(sessions, 6)
    failures_before = counter(OUTBOX_DELIVERY_FAILURES)
    dispatcher = OutboxDispatcher(outbox_settings(outbox_max_attempts=1000), sessions)
    async with dispatcher.running():

        async def retried_while_down() -> bool:
            current = await rows(sessions)
            return all(current[i].attempts >= 2 and current[i].status == "PENDING" for i in ids)

        await wait_until(retried_while_down, "every message to fail at least twice")
        assert counter(OUTBOX_DELIVERY_FAILURES) - failures_before >= 12
        assert peer.notifications.notifications == []

        await peer.up("notification")
        await wait_until(lambda: all_in_status(sessions, ids, "DELIVERED"), "delivery")

    assert received_ids(peer) == ids
    assert peer.notifications.duplicates == 0
    assert peer.notifications.concurrent_duplicates == 0
    current = await rows(sessions)
    assert all("unreachable" in (current[i].last_error or "") for i in ids)


async def test_failing_peer_is_retried_until_it_accepts(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """Error answers count as failed attempts, retried with backoff until a 2xx."""
    peer.notification_faults.set("flaky", count=3, status_code=503)
    [message_id] = await enqueue(sessions, 1)
    failures_before = counter(OUTBOX_DELIVERY_FAILURES)
    async with OutboxDispatcher(outbox_settings(), sessions).running():
        await wait_until(lambda: all_in_status(sessions, [message_id], "DELIVERED"), "delivery")

    row = (await rows(sessions))[message_id]
    assert row.attempts == 4
    assert "503" in (row.last_error or "")
    assert counter(OUTBOX_DELIVERY_FAILURES) - failures_before == 3
    assert received_ids(peer) == [message_id]


async def test_slow_peer_times_out_and_the_message_is_retried(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """A peer slower than NOTIFICATION_TIMEOUT_SECONDS is a failed attempt, retried later."""
    settings = outbox_settings(notification_timeout_seconds=0.2)
    peer.notification_faults.set("slow", delay_seconds=5.0)
    [message_id] = await enqueue(sessions, 1)
    dispatcher = OutboxDispatcher(settings, sessions)

    assert await dispatcher.run_once() == 0
    row = (await rows(sessions))[message_id]
    assert (row.status, row.attempts) == ("PENDING", 1)
    assert "did not answer within 0.2 s" in (row.last_error or "")

    peer.notification_faults.set("normal")
    peer.notification_faults.interrupt()  # let the abandoned slow request finish now
    await wait_until(
        lambda: _run_and_check(dispatcher, sessions, message_id), "delivery after the slowdown"
    )
    row = (await rows(sessions))[message_id]
    assert row.attempts >= 2
    assert message_id in received_ids(peer)


async def _run_and_check(
    dispatcher: OutboxDispatcher, sessions: SessionFactory, message_id: int
) -> bool:
    await dispatcher.run_once()
    return await all_in_status(sessions, [message_id], "DELIVERED")


async def test_message_failing_max_attempts_is_failed_and_kept(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """After OUTBOX_MAX_ATTEMPTS failures the row is FAILED, keeps its last error and stays."""
    peer.notification_faults.set("fail", status_code=500)
    [message_id] = await enqueue(sessions, 1)
    failures_before = counter(OUTBOX_DELIVERY_FAILURES)
    async with OutboxDispatcher(outbox_settings(outbox_max_attempts=3), sessions).running():
        await wait_until(lambda: all_in_status(sessions, [message_id], "FAILED"), "FAILED")
        await asyncio.sleep(0.1)  # a few more polls: a FAILED row is never picked up again

    row = (await rows(sessions))[message_id]
    assert row.status == "FAILED"
    assert row.attempts == 3
    assert row.last_error == "the Notification service answered 500"
    assert row.delivered_at is None
    assert counter(OUTBOX_DELIVERY_FAILURES) - failures_before == 3
    assert peer.notification_faults.injected_failures == 3
    assert OUTBOX_PENDING._value.get() == 0


async def test_two_dispatchers_never_deliver_one_message_twice(
    peer: Sandbox,
    outbox_settings: Callable[..., Settings],
    sessions: SessionFactory,
    factories: Callable[..., SessionFactory],
) -> None:
    """Two replicas on separate engines split 50 messages: each delivered once, never at once."""
    peer.notification_faults.set("slow", delay_seconds=0.05)  # widen the overlap window
    ids = await enqueue(sessions, 50)
    settings = outbox_settings(outbox_batch_size=5, outbox_poll_interval_seconds=0.01)
    transports = [CountingTransport(), CountingTransport()]
    first, second = (
        OutboxDispatcher(settings, factories(), transport=transport, concurrency=5)
        for transport in transports
    )
    async with first.running(), second.running():
        await wait_until(lambda: all_in_status(sessions, ids, "DELIVERED"), "50 deliveries")

    assert all(transport.requests > 0 for transport in transports)  # both took a share
    assert sum(transport.requests for transport in transports) == 50

    assert received_ids(peer) == ids
    assert peer.notifications.concurrent_duplicates == 0
    assert peer.notifications.duplicates == 0
    assert all(row.attempts == 1 for row in (await rows(sessions)).values())


async def test_claims_skip_rows_another_transaction_holds(
    peer: Sandbox, sessions: SessionFactory
) -> None:
    """`FOR UPDATE SKIP LOCKED`: a second claimer gets the other rows at once, never waits."""
    ids = await enqueue(sessions, 5)
    async with sessions() as holder, holder.begin():
        held = await OutboxRepository(holder).claim_due(3, lease_seconds=60)
        async with asyncio.timeout(5), sessions() as other, other.begin():
            taken = await OutboxRepository(other).claim_due(10, lease_seconds=60)
        assert [m.id for m in held] == ids[:3]  # oldest first
        assert [m.id for m in taken] == ids[3:]
        await holder.rollback()  # the first claimer vanishes: its rows are due again
    async with sessions() as session, session.begin():
        again = await OutboxRepository(session).claim_due(10, lease_seconds=60)
    assert [m.id for m in again] == ids[:3]


async def test_message_claimed_by_a_crashed_dispatcher_is_sent_after_its_lease(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """A claim whose dispatcher died is invisible until the lease ends, then delivered.

    The lease is long and then ended in the database (the clock the claim reads), so
    neither step races a timer."""
    [message_id] = await enqueue(sessions, 1)
    async with sessions() as session, session.begin():
        [claimed] = await OutboxRepository(session).claim_due(10, lease_seconds=600)
    assert claimed.id == message_id
    dispatcher = OutboxDispatcher(outbox_settings(), sessions)
    assert await dispatcher.run_once() == 0  # still leased to the "crashed" one
    assert received_ids(peer) == []

    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE notification_outbox SET next_attempt_at = now() - interval '1 second' "
                "WHERE id = :id"
            ),
            {"id": message_id},
        )
    assert await dispatcher.run_once() == 1  # the lease has ended: delivered now
    assert await all_in_status(sessions, [message_id], "DELIVERED")
    assert received_ids(peer) == [message_id]


async def test_lost_lease_leaves_the_new_owners_row_alone(
    peer: Sandbox, sessions: SessionFactory
) -> None:
    """A stale claimer cannot reschedule a row that another dispatcher has claimed since."""
    [message_id] = await enqueue(sessions, 1)
    async with sessions() as session, session.begin():
        [stale] = await OutboxRepository(session).claim_due(1, lease_seconds=0.01)
    await asyncio.sleep(0.05)
    async with sessions() as session, session.begin():
        [fresh] = await OutboxRepository(session).claim_due(1, lease_seconds=60)
    async with sessions() as session, session.begin():
        repository = OutboxRepository(session)
        status = await repository.mark_failed_attempt(
            stale, "late", retry_in_seconds=0, max_attempts=1
        )
        assert status is None
        assert not await repository.release(stale)
    row = (await rows(sessions))[message_id]
    assert (row.status, row.attempts, row.next_attempt_at) == ("PENDING", 0, fresh.lease_until)


async def test_batched_failures_fence_each_row_by_its_own_lease(
    peer: Sandbox, sessions: SessionFactory
) -> None:
    """One statement records many failed attempts; a row whose lease was lost is left out."""
    first, second = await enqueue(sessions, 2)
    async with sessions() as session, session.begin():
        claim = await OutboxRepository(session).claim(2, lease_seconds=0.01)
    assert claim.pending == 2
    stale_first, held_second = claim.messages
    await asyncio.sleep(0.05)
    async with sessions() as session, session.begin():
        [fresh_first] = await OutboxRepository(session).claim_due(1, lease_seconds=60)
    assert fresh_first.id == first
    async with sessions() as session, session.begin():
        statuses = await OutboxRepository(session).mark_failed_attempts(
            [
                FailedAttempt(stale_first, "late", retry_in_seconds=0),
                FailedAttempt(held_second, "boom " * 200, retry_in_seconds=30),
            ],
            max_attempts=1,
        )
    assert statuses == {second: "FAILED"}
    current = await rows(sessions)
    assert (current[first].status, current[first].attempts) == ("PENDING", 0)
    assert current[first].next_attempt_at == fresh_first.lease_until
    assert (current[second].status, current[second].attempts) == ("FAILED", 1)
    assert len(current[second].last_error or "") == 500


async def test_stopping_finishes_the_in_flight_batch(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """Leaving `running()` waits for the batch on the wire and records it."""
    peer.notification_faults.set("slow", delay_seconds=0.3)
    ids = await enqueue(sessions, 3)
    async with OutboxDispatcher(outbox_settings(), sessions).running():

        async def claimed() -> bool:
            async with sessions() as session:
                leased = await session.execute(
                    select(OutboxMessage.id).where(OutboxMessage.next_attempt_at > text("now()"))
                )
                return len(leased.all()) == 3

        await wait_until(claimed, "the batch to be claimed")
    assert await all_in_status(sessions, ids, "DELIVERED")
    assert received_ids(peer) == ids


async def test_loop_survives_the_database_dropping_its_connections(
    peer: Sandbox,
    outbox_settings: Callable[..., Settings],
    sessions: SessionFactory,
    factories: Callable[..., SessionFactory],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Killed database connections are logged and backed off; delivery then carries on.

    Without the pool's pre-ping, so that the dead connections do reach the loop.
    """
    [first] = await enqueue(sessions, 1)
    dispatcher_sessions = factories(db_pool_pre_ping=False)
    async with OutboxDispatcher(outbox_settings(), dispatcher_sessions).running() as dispatcher:
        await wait_until(lambda: all_in_status(sessions, [first], "DELIVERED"), "first delivery")
        with caplog.at_level(logging.WARNING, logger="payment_service.worker.dispatcher"):
            async with dispatcher_sessions() as session:  # learn the dispatcher pool's backends
                await session.execute(text("select 1"))
            async with engine.connect() as admin:
                await admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = 'payment-service'"
                    )
                )
            await wait_until(
                lambda: _logged(caplog, "outbox batch failed; retrying"), "the error to be logged"
            )
        [second] = await enqueue(sessions, 1)
        await wait_until(lambda: all_in_status(sessions, [second], "DELIVERED"), "delivery after")
        assert dispatcher is not None
    assert received_ids(peer) == [first, second]


async def test_loop_survives_a_session_factory_that_fails(
    peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """Any exception out of a batch is logged and retried; the loop never dies of it."""
    failures = 3
    calls = 0

    def flaky_factory() -> AsyncSession:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise ConnectionRefusedError("database restarting")
        return sessions()

    [message_id] = await enqueue(sessions, 1)
    async with OutboxDispatcher(outbox_settings(), flaky_factory).running():  # type: ignore[arg-type]
        await wait_until(lambda: all_in_status(sessions, [message_id], "DELIVERED"), "delivery")
    assert calls > failures
    assert received_ids(peer) == [message_id]


async def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return any(record.getMessage() == message for record in caplog.records)


# -- signed deliveries (Standard Webhooks) -------------------------------------

SIGNING_SECRET = "whsec_" + base64.b64encode(b"outbox-signing-test-secret-0001").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not-the-secret-the-sink-knows-2").decode()


@pytest.fixture
def verifying_peer(peer: Sandbox) -> Iterator[Sandbox]:
    """The sandbox sink verifying deliveries with SIGNING_SECRET, for one test."""
    peer.notifications.use_secret(SIGNING_SECRET)
    yield peer
    peer.notifications.use_secret(None)


async def test_signed_deliveries_verify_with_the_standardwebhooks_library(
    verifying_peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """What the sink received verifies with `Webhook(secret).verify`: id, timestamp, body."""
    ids = await enqueue(sessions, 2)
    dispatcher = OutboxDispatcher(
        outbox_settings(notification_signing_secret=SIGNING_SECRET), sessions
    )

    assert await dispatcher.run_once() == 2

    current = await rows(sessions)
    entries = verifying_peer.notifications.notifications
    assert sorted(entry["body"]["message_id"] for entry in entries) == ids
    for entry in entries:
        headers = {name: value for name, value in entry["headers"].items() if value is not None}
        verified = Webhook(SIGNING_SECRET).verify(entry["raw_body"], headers)
        event_id = str(current[verified["message_id"]].event_id)
        assert verified["event_id"] == headers["webhook-id"] == event_id
        assert headers["idempotency-key"] == event_id
        assert headers["webhook-signature"].startswith("v1,")
    assert verifying_peer.notifications.bad_signatures == 0


async def test_a_sink_with_another_secret_counts_a_bad_signature_and_the_message_retries(
    verifying_peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """Signed with a secret the receiver does not know: refused (401), counted, kept PENDING."""
    [message_id] = await enqueue(sessions, 1)
    dispatcher = OutboxDispatcher(
        outbox_settings(notification_signing_secret=OTHER_SECRET), sessions
    )

    assert await dispatcher.run_once() == 0

    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{verifying_peer.notification_url}/v1/notifications")).json()
    assert (stats["count"], stats["bad_signatures"]) == (0, 1)
    row = (await rows(sessions))[message_id]
    assert (row.status, row.attempts) == ("PENDING", 1)
    assert row.last_error == "the Notification service answered 401"


async def test_unsigned_deliveries_fail_a_verifying_sink(
    verifying_peer: Sandbox, outbox_settings: Callable[..., Settings], sessions: SessionFactory
) -> None:
    """No NOTIFICATION_SIGNING_SECRET: no webhook-signature, which a verifying sink refuses."""
    await enqueue(sessions, 1)

    assert await OutboxDispatcher(outbox_settings(), sessions).run_once() == 0
    assert verifying_peer.notifications.bad_signatures == 1
