"""The payment and refund state machine against a real PostgreSQL and the sandbox Trip service.

The processor here is an in-process scripted gateway (the end-to-end and chaos tests use
the sandbox Stripe processor over loopback): it records every call by idempotency key, so
"the same key resumes the same payment and the processor is never asked for a second
capture" is checked directly.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from payment_service.app import create_app
from payment_service.clients.gateway import (
    ChargeAttempt,
    ChargeResult,
    GatewayEvent,
    GatewayUnavailableError,
    InvalidWebhookError,
    ProcessorRecord,
    RefundAttempt,
    RefundResult,
)
from payment_service.models.enums import PaymentStatus, RefundStatus
from payment_service.worker.reconciler import Reconciler
from tests.conftest import insert_payment
from tests.integration.conftest import money_settings

CHARGE = "/v1/payments/charge"


class ScriptedGateway:
    """A processor whose next answers are scripted; it counts calls per idempotency key."""

    name = "stripe"

    def __init__(self) -> None:
        self.charge_plan: deque[str] = deque()
        self.refund_plan: deque[str] = deque()
        self.charge_calls: Counter[str] = Counter()
        self.refund_calls: Counter[str] = Counter()
        self.captured: dict[str, Decimal] = {}
        self.refunded: Counter[str] = Counter()
        self.delay = 0.0

    async def charge(self, attempt: ChargeAttempt) -> ChargeResult:
        self.charge_calls[attempt.idempotency_key] += 1
        step = self.charge_plan.popleft() if self.charge_plan else "success"
        if self.delay:
            await asyncio.sleep(self.delay)
        if step == "unavailable":
            raise GatewayUnavailableError()
        if step == "capture_then_unavailable":
            self.captured[attempt.idempotency_key] = attempt.amount
            raise GatewayUnavailableError("timed out")
        if step == "decline":
            return ChargeResult(PaymentStatus.FAILED, f"pi_{attempt.payment_id}", "Declined", "x")
        if step == "pending":
            return ChargeResult(PaymentStatus.PENDING, f"pi_{attempt.payment_id}", "Pending")
        self.captured[attempt.idempotency_key] = attempt.amount
        return ChargeResult(PaymentStatus.SUCCESS, f"pi_{attempt.payment_id}", "Paid")

    async def lookup_charge(self, attempt: ChargeAttempt) -> ChargeResult:
        if attempt.idempotency_key in self.captured:
            return ChargeResult(PaymentStatus.SUCCESS, f"pi_{attempt.payment_id}", "Paid")
        return await self.charge(attempt)

    async def refund(self, attempt: RefundAttempt) -> RefundResult:
        self.refund_calls[attempt.idempotency_key] += 1
        step = self.refund_plan.popleft() if self.refund_plan else "success"
        if self.delay:
            await asyncio.sleep(self.delay)
        if step == "unavailable":
            raise GatewayUnavailableError()
        if step == "decline":
            return RefundResult(RefundStatus.FAILED, f"re_{attempt.refund_id}", "declined")
        if step == "pending":
            return RefundResult(RefundStatus.PROCESSING, f"re_{attempt.refund_id}")
        if attempt.idempotency_key not in self.refunded:
            self.refunded[attempt.idempotency_key] += 1
        return RefundResult(RefundStatus.SUCCEEDED, f"re_{attempt.refund_id}")

    async def lookup_refund(self, attempt: RefundAttempt) -> RefundResult:
        self.refunded[attempt.idempotency_key] = 1
        return RefundResult(RefundStatus.SUCCEEDED, f"re_{attempt.refund_id}")

    async def processor_record(self, attempt: ChargeAttempt) -> ProcessorRecord | None:
        return None

    def parse_webhook(self, payload: bytes, headers: Mapping[str, str]) -> GatewayEvent | None:
        if headers.get("stripe-signature") != "valid":
            raise InvalidWebhookError("no valid signature")
        data = json.loads(payload)
        return GatewayEvent(
            event_id=data["id"],
            kind=data["kind"],
            gateway_reference=data["ref"],
            payment_id=data.get("payment_id"),
            refund_id=data.get("refund_id"),
            payment_status=PaymentStatus(data["status"]) if data["kind"] == "payment" else None,
            refund_status=RefundStatus(data["status"]) if data["kind"] == "refund" else None,
        )

    async def aclose(self) -> None:
        return None


@pytest.fixture
def gateway() -> ScriptedGateway:
    return ScriptedGateway()


@pytest.fixture
async def app_and_client(
    database_url: str, peers: Sandbox, gateway: ScriptedGateway
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = money_settings(database_url, peers, idempotency_lease_seconds=0.5)
    application = create_app(settings, run_dispatcher=False, run_reconciler=False)
    async with application.router.lifespan_context(application):
        application.state.gateway = gateway
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


@pytest.fixture
def client(app_and_client: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_client[1]


async def payment_row(engine: AsyncEngine, trip_id: int) -> dict[str, Any]:
    async with engine.connect() as connection:
        rows = (
            (
                await connection.execute(
                    text("SELECT * FROM payments WHERE trip_id = :t ORDER BY id"), {"t": trip_id}
                )
            )
            .mappings()
            .all()
        )
    assert len(rows) == 1, rows
    return dict(rows[0])


async def test_processor_down_leaves_processing_and_the_same_key_resumes_it(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    peers: Sandbox,
    engine: AsyncEngine,
) -> None:
    """503 + Retry-After, the payment stays PROCESSING; the retry resumes it with the same
    gateway key and no second Trip lookup."""
    trip_id = new_trip_id()
    gateway.charge_plan.append("unavailable")
    body = {"trip_id": trip_id, "method": "CARD", "idempotency_key": "resume-1"}

    first = await client.post(CHARGE, json=body)
    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"]
    row = await payment_row(engine, trip_id)
    assert row["status"] == "PROCESSING"
    lookups = peers.trips.get_requests_for(trip_id)

    second = await client.post(CHARGE, json=body)
    assert second.status_code == 201, second.text
    assert second.json()["payment_id"] == row["id"]
    assert peers.trips.get_requests_for(trip_id) == lookups  # no second Trip lookup
    assert gateway.charge_calls == Counter({row["gateway_idempotency_key"]: 2})
    assert (await payment_row(engine, trip_id))["status"] == "SUCCESS"

    replay = await client.post(CHARGE, json=body)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == second.json()


async def test_a_failure_after_capture_keeps_the_key_and_a_retry_records_one_capture(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """The processor captured but the answer was lost: the key is never released, and the
    retry (same gateway key) records SUCCESS with exactly one capture."""
    trip_id = new_trip_id()
    gateway.charge_plan.append("capture_then_unavailable")
    body = {"trip_id": trip_id, "method": "UPI", "idempotency_key": "lost-answer"}

    assert (await client.post(CHARGE, json=body)).status_code == 503
    row = await payment_row(engine, trip_id)
    assert row["status"] == "PROCESSING"
    # Another key for the same trip cannot start a second payment meanwhile.
    other = await client.post(CHARGE, json=body | {"idempotency_key": "lost-answer-2"})
    assert other.status_code == 409, other.text
    assert other.json()["payment_id"] == row["id"]

    retry = await client.post(CHARGE, json=body)
    assert retry.status_code == 201, retry.text
    assert list(gateway.captured) == [row["gateway_idempotency_key"]]


async def test_the_reconciler_finishes_a_processing_payment_nobody_retried(
    app_and_client: tuple[Any, httpx.AsyncClient],
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """With no retry at all, the reconciler asks the processor and records SUCCESS; the
    caller's key then replays the final answer."""
    application, client = app_and_client
    trip_id = new_trip_id()
    gateway.charge_plan.append("capture_then_unavailable")
    body = {"trip_id": trip_id, "method": "CARD", "idempotency_key": "reconcile-me"}
    assert (await client.post(CHARGE, json=body)).status_code == 503

    reconciler = Reconciler(application.state.settings, application.state.session_factory, gateway)
    result = await reconciler.run_once(older_than=0)
    assert result.finished >= 1
    row = await payment_row(engine, trip_id)
    assert row["status"] == "SUCCESS"
    # Lookup found the capture: no new charge for this payment (other tests' abandoned
    # PROCESSING rows in the session database may be reconciled in the same pass).
    assert gateway.charge_calls[row["gateway_idempotency_key"]] == 1

    replay = await client.post(CHARGE, json=body)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["status"] == "SUCCESS"


async def test_pending_then_webhook_success_once_and_forged_webhooks_change_nothing(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """PENDING -> SUCCESS by a verified webhook; a redelivery is a no-op; a forged one is a
    400 problem that changes nothing."""
    trip_id = new_trip_id()
    gateway.charge_plan.append("pending")
    charged = await client.post(
        CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": "pend-1"}
    )
    assert charged.status_code == 202
    assert charged.json()["status"] == "PENDING"
    payment_id = charged.json()["payment_id"]
    event = {
        "id": f"evt_{trip_id}",
        "kind": "payment",
        "ref": f"pi_{payment_id}",
        "payment_id": payment_id,
        "status": "SUCCESS",
    }
    url = "/v1/gateway/webhooks/stripe"

    forged = await client.post(url, content=json.dumps(event), headers={"Stripe-Signature": "x"})
    assert forged.status_code == 400
    assert forged.headers["content-type"] == "application/problem+json"
    assert (await payment_row(engine, trip_id))["status"] == "PENDING"

    applied = await client.post(
        url, content=json.dumps(event), headers={"Stripe-Signature": "valid"}
    )
    assert applied.status_code == 200, applied.text
    assert applied.json()["outcome"] == "applied"
    assert (await payment_row(engine, trip_id))["status"] == "SUCCESS"

    again = await client.post(url, content=json.dumps(event), headers={"Stripe-Signature": "valid"})
    assert again.json()["outcome"] == "duplicate"
    async with engine.connect() as connection:
        events = await connection.scalar(
            text("SELECT count(*) FROM payment_events WHERE payment_id = :p"), {"p": payment_id}
        )
    assert events == 3  # started, pending, success: the duplicate added nothing

    assert (await client.post("/v1/gateway/webhooks/paypal", content=b"{}")).status_code == 404


async def first_id(engine: AsyncEngine, sql: str, key: int) -> int:
    """The id `sql` (one `:k` parameter) finds, once a request in flight has written it."""
    for _ in range(100):
        await asyncio.sleep(0.02)
        async with engine.connect() as connection:
            found = await connection.scalar(text(sql), {"k": key})
        if found is not None:
            return int(found)
    raise AssertionError(f"nothing found by {sql!r} within 2 s")


async def send_webhook(client: httpx.AsyncClient, event: dict[str, Any]) -> httpx.Response:
    """A processor event, signed as the scripted gateway expects."""
    return await client.post(
        "/v1/gateway/webhooks/stripe",
        content=json.dumps(event),
        headers={"Stripe-Signature": "valid"},
    )


async def test_a_webhook_that_arrives_before_the_request_records_wins_once(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """The processor's webhook lands while the request still waits for its answer: the
    payment is finished once, and the request answers with the recorded state."""
    trip_id = new_trip_id()
    gateway.delay = 0.5
    task = asyncio.create_task(
        client.post(
            CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": "race-hook"}
        )
    )
    payment_id = await first_id(engine, "SELECT id FROM payments WHERE trip_id = :k", trip_id)
    event = {
        "id": f"evt_race_{trip_id}",
        "kind": "payment",
        "ref": f"pi_{payment_id}",
        "payment_id": payment_id,
        "status": "SUCCESS",
    }
    hook = await send_webhook(client, event)
    assert hook.json()["outcome"] == "applied"
    response = await task
    assert response.status_code == 201, response.text
    async with engine.connect() as connection:
        finished = await connection.scalar(
            text(
                "SELECT count(*) FROM payment_events WHERE payment_id = :p "
                "AND event_type = 'CHARGE_SUCCESS'"
            ),
            {"p": payment_id},
        )
        # The request's one-statement finish found the row moved and wrote nothing of
        # its own: one journal, one message, and the stored answer is what it sent.
        journals = await connection.scalar(
            text("SELECT count(*) FROM ledger_journals WHERE payment_id = :p"), {"p": payment_id}
        )
        messages = await connection.scalar(
            text("SELECT count(*) FROM notification_outbox WHERE payment_id = :p"),
            {"p": payment_id},
        )
    assert (finished, journals, messages) == (1, 1, 1)
    replay = await client.post(
        CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": "race-hook"}
    )
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.status_code == 201
    # The request answered with what the webhook stored, so a replay is the same bytes.
    assert replay.content == response.content


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("FAILED", "SUCCESS"),
        ("REFUNDED", "SUCCESS"),
        ("SUCCESS", "PENDING"),
        ("SUCCESS", "PROCESSING"),
        ("PENDING", "PROCESSING"),
        ("PARTIALLY_REFUNDED", "SUCCESS"),
    ],
)
async def test_the_database_refuses_transitions_spec_does_not_list(
    engine: AsyncEngine, start: str, target: str
) -> None:
    """The trigger `payments_status_transition` refuses e.g. FAILED -> SUCCESS."""
    refunded = {"REFUNDED": Decimal("10.50"), "PARTIALLY_REFUNDED": Decimal("1.00")}
    async with engine.begin() as connection:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=connection) as session:
            payment_id = await insert_payment(
                session, status=start, refunded_amount=refunded.get(start, Decimal("0"))
            )
        if start in refunded:
            await connection.execute(
                text(
                    "INSERT INTO refunds (payment_id, amount, status) VALUES (:p, :a, 'SUCCEEDED')"
                ),
                {"p": payment_id, "a": refunded[start]},
            )
    with pytest.raises(DBAPIError, match="cannot move from"):
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE payments SET status = :s WHERE id = :p"),
                {"s": target, "p": payment_id},
            )


async def test_allowed_transitions_pass_the_trigger(engine: AsyncEngine) -> None:
    """PROCESSING -> PENDING -> SUCCESS is allowed; seeding may insert any status."""
    async with engine.begin() as connection:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=connection) as session:
            payment_id = await insert_payment(session, status="PROCESSING")
        for status in ("PENDING", "SUCCESS"):
            await connection.execute(
                text("UPDATE payments SET status = :s WHERE id = :p"),
                {"s": status, "p": payment_id},
            )


async def charged_payment(client: httpx.AsyncClient, trip_id: int) -> dict[str, Any]:
    response = await client.post(
        CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": f"c-{trip_id}"}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_refused_refund_gives_its_amount_back(
    client: httpx.AsyncClient, gateway: ScriptedGateway, new_trip_id: Callable[[], int]
) -> None:
    """The processor refuses: 422 refund-declined, stored for the key, all still refundable."""
    payment = await charged_payment(client, new_trip_id())
    url = f"/v1/payments/{payment['payment_id']}/refund"
    gateway.refund_plan.append("decline")
    refused = await client.post(url, json={"idempotency_key": "r-dec", "amount": 1.00})
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("refund-declined")
    assert Decimal(str(refused.json()["remaining_refundable"])) == Decimal(str(payment["amount"]))
    replay = await client.post(url, json={"idempotency_key": "r-dec", "amount": 1.00})
    assert replay.status_code == 422
    assert replay.headers["Idempotent-Replayed"] == "true"

    full = await client.post(url, json={"idempotency_key": "r-all"})
    assert full.status_code == 200, full.text
    assert full.json()["status"] == "REFUNDED"
    assert full.json()["refund_status"] == "SUCCEEDED"


async def test_a_refund_webhook_that_overtakes_the_request_sets_its_answer(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """A refund's webhook lands while its request waits for the slow processor, and the
    payment moves on (the rest is refunded) before the request answers: the caller gets
    what the webhook stored on its key (PARTIALLY_REFUNDED then), so a replay is the same
    bytes. A clean-clone CI run caught the request answering from the newer state."""
    payment = await charged_payment(client, new_trip_id())
    amount = Decimal(str(payment["amount"]))
    url = f"/v1/payments/{payment['payment_id']}/refund"
    gateway.delay = 1.0
    task = asyncio.create_task(
        client.post(url, json={"idempotency_key": "r-overtaken", "amount": "1.00"})
    )
    refund_id = await first_id(
        engine, "SELECT id FROM refunds WHERE payment_id = :k", payment["payment_id"]
    )
    event = {
        "id": f"evt_refund_race_{refund_id}",
        "kind": "refund",
        "ref": f"re_{refund_id}",
        "refund_id": refund_id,
        "status": "SUCCEEDED",
    }
    hook = await send_webhook(client, event)
    assert hook.json()["outcome"] == "applied", hook.text
    gateway.delay = 0.0
    rest = await client.post(
        url, json={"idempotency_key": "r-rest", "amount": str(amount - Decimal("1.00"))}
    )
    assert rest.status_code == 200, rest.text
    assert rest.json()["status"] == "REFUNDED"

    response = await task
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "PARTIALLY_REFUNDED"  # as the webhook recorded it
    replay = await client.post(url, json={"idempotency_key": "r-overtaken", "amount": "1.00"})
    assert replay.headers.get("idempotent-replayed") == "true"
    assert (replay.status_code, replay.content) == (response.status_code, response.content)


async def test_pending_refunds_count_as_spent_until_confirmed(
    app_and_client: tuple[Any, httpx.AsyncClient],
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
) -> None:
    """A refund pending at the processor reserves its amount (202); the reconciler confirms
    it and the payment follows."""
    application, client = app_and_client
    payment = await charged_payment(client, new_trip_id())
    amount = Decimal(str(payment["amount"]))
    url = f"/v1/payments/{payment['payment_id']}/refund"
    gateway.refund_plan.append("pending")
    pending = await client.post(url, json={"idempotency_key": "r-pend", "amount": 1.00})
    assert pending.status_code == 202, pending.text
    assert pending.json()["refund_status"] == "PROCESSING"
    assert pending.json()["status"] == "SUCCESS"
    assert Decimal(str(pending.json()["remaining_refundable"])) == amount - Decimal("1.00")

    too_much = await client.post(url, json={"idempotency_key": "r-over", "amount": str(amount)})
    assert too_much.status_code == 422

    reconciler = Reconciler(application.state.settings, application.state.session_factory, gateway)
    await reconciler.run_once(older_than=0)
    listed = (await client.get(f"/v1/payments/{payment['payment_id']}/refunds")).json()
    assert [r["status"] for r in listed["refunds"]] == ["SUCCEEDED"]
    assert Decimal(str(listed["total_refunded"])) == Decimal("1.00")
    got = (await client.get(f"/v1/payments/{payment['payment_id']}")).json()
    assert got["status"] == "PARTIALLY_REFUNDED"


async def test_concurrent_refunds_with_a_slow_processor_never_exceed_the_amount(
    client: httpx.AsyncClient,
    gateway: ScriptedGateway,
    new_trip_id: Callable[[], int],
    engine: AsyncEngine,
) -> None:
    """25 concurrent partial refunds, the processor slow and refusing some: what succeeded
    never passes the amount and refused ones leave their money refundable."""
    payment = await charged_payment(client, new_trip_id())
    amount = Decimal(str(payment["amount"]))
    part = (amount / 10).quantize(Decimal("0.01"))
    gateway.delay = 0.05
    gateway.refund_plan.extend(["decline", "success"] * 3)
    url = f"/v1/payments/{payment['payment_id']}/refund"
    responses = await asyncio.gather(
        *(
            client.post(url, json={"idempotency_key": f"cr-{i}", "amount": str(part)})
            for i in range(25)
        )
    )
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 409, 422}, codes
    succeeded = sum(
        Decimal(str(r.json()["refund_amount"])) for r in responses if r.status_code == 200
    )
    assert succeeded <= amount
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT refunded_amount, refund_reserved FROM payments WHERE id = :p"),
                {"p": payment["payment_id"]},
            )
        ).one()
    assert row.refunded_amount == succeeded
    assert row.refund_reserved == 0
    declined = sum(
        1
        for r in responses
        if r.status_code == 422 and r.json()["type"].endswith("refund-declined")
    )
    assert declined == 3


@pytest.mark.parametrize(
    ("start", "target"),
    [("SUCCEEDED", "PROCESSING"), ("SUCCEEDED", "FAILED"), ("FAILED", "SUCCEEDED")],
)
async def test_the_database_refuses_refund_transitions_the_processor_does_not_allow(
    engine: AsyncEngine, start: str, target: str
) -> None:
    """Trigger `refunds_status_transition`: a finished refund stays finished."""
    refunded = Decimal("1.00") if start == "SUCCEEDED" else Decimal("0")
    async with engine.begin() as connection:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=connection) as session:
            payment_id = await insert_payment(
                session,
                status="PARTIALLY_REFUNDED" if refunded else "SUCCESS",
                refunded_amount=refunded,
            )
        refund_id = await connection.scalar(
            text(
                "INSERT INTO refunds (payment_id, amount, status) VALUES (:p, 1.00, :s) "
                "RETURNING id"
            ),
            {"p": payment_id, "s": start},
        )
    with pytest.raises(DBAPIError, match="cannot move from"):
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE refunds SET status = :s WHERE id = :r"), {"s": target, "r": refund_id}
            )
