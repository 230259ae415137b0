"""The Stripe adapter against the real sandbox processor on loopback (the SDK's real HTTP)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from payment_sandbox import PeerServer, Sandbox, SandboxConfig, build_sandbox
from payment_sandbox.processor import sign_payload
from payment_service.clients.gateway import (
    ChargeAttempt,
    GatewayAuthError,
    GatewayUnavailableError,
    InvalidWebhookError,
    RefundAttempt,
)
from payment_service.clients.stripe_gateway import (
    StripeGateway,
    from_minor_units,
    to_minor_units,
)
from payment_service.models.enums import PaymentMethod, PaymentStatus, RefundStatus
from payment_service.settings import ConfigurationError, Settings

API_KEY = "sk_test_sandbox"  # made up: the sandbox accepts exactly this key here
WEBHOOK_SECRET = "whsec_made_up_for_tests"
DELAY = 0.2


@pytest.fixture(scope="module")
async def processor_sandbox() -> AsyncIterator[Sandbox]:
    """A sandbox whose processor takes only API_KEY, on ports the OS picks."""
    config = SandboxConfig(
        trip_port=0,
        notification_port=0,
        processor_port=0,
        control_port=0,
        trips_file=None,
        processor_api_key=API_KEY,
        delay_seconds=DELAY,
        log_level=None,
    )
    async with build_sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
async def sandbox(processor_sandbox: Sandbox) -> Sandbox:
    await processor_sandbox.reset()
    return processor_sandbox


def gateway_settings(sandbox: Sandbox, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "gateway": "stripe",
        "stripe_api_key": API_KEY,
        "stripe_api_base": sandbox.processor_url,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def gateway(sandbox: Sandbox) -> AsyncIterator[StripeGateway]:
    adapter = StripeGateway(gateway_settings(sandbox))
    yield adapter
    await adapter.aclose()


def attempt(simulate: str | None = None, **overrides: Any) -> ChargeAttempt:
    payment_id = uuid.uuid4().int % 1_000_000
    metadata = {"simulate": simulate} if simulate else {}
    values: dict[str, Any] = {
        "payment_id": payment_id,
        "idempotency_key": f"pay-{payment_id}-{uuid.uuid4().hex[:8]}",
        "reference": f"PAY-{payment_id}",
        "trip_id": 1_000_000 + payment_id,
        "method": PaymentMethod.CARD,
        "amount": Decimal("10.50"),
        "currency": "INR",
        "metadata": metadata,
    }
    values.update(overrides)
    return ChargeAttempt(**values)


def refund_attempt(charge: ChargeAttempt, reference: str | None, amount: str) -> RefundAttempt:
    refund_id = uuid.uuid4().int % 1_000_000
    return RefundAttempt(
        refund_id=refund_id,
        payment_id=charge.payment_id,
        idempotency_key=f"ref-{refund_id}-{uuid.uuid4().hex[:8]}",
        payment_gateway_reference=reference,
        amount=Decimal(amount),
        currency=charge.currency,
        reason="rider complaint",
    )


async def ledger(sandbox: Sandbox, payment_id: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{sandbox.control_url}/processor/ledger", params={"payment_id": str(payment_id)}
        )
    return response.json()["payment_intents"]


# --- amounts ---------------------------------------------------------------------------


def test_minor_units_are_exact_decimals() -> None:
    """10.50 INR is 1050 paise and back, a sum of decimals stays exact, JPY has no minor unit."""
    assert to_minor_units(Decimal("10.50"), "INR") == 1050
    assert to_minor_units(Decimal("0.1") + Decimal("0.2"), "usd") == 30
    assert to_minor_units(Decimal("500"), "JPY") == 500
    assert from_minor_units(1050, "inr") == Decimal("10.50")
    assert str(from_minor_units(1050, "inr")) == "10.50"
    with pytest.raises(ValueError):
        to_minor_units(Decimal("10.505"), "INR")


def test_stripe_without_an_api_key_is_a_configuration_error() -> None:
    """GATEWAY=stripe with no STRIPE_API_KEY fails with one clear line."""
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        StripeGateway(Settings(_env_file=None, stripe_api_key=None))  # type: ignore[call-arg]


# --- charges ---------------------------------------------------------------------------


async def test_charge_succeeds_and_the_processor_holds_our_ids(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """SUCCESS with the PaymentIntent id; its metadata carries payment id, reference, trip."""
    charge = attempt()

    result = await gateway.charge(charge)

    assert result.status is PaymentStatus.SUCCESS
    assert result.gateway_reference is not None and result.gateway_reference.startswith("pi_")
    [entry] = await ledger(sandbox, charge.payment_id)
    assert (entry["id"], entry["amount"], entry["currency"]) == (
        result.gateway_reference,
        1050,
        "inr",
    )
    assert entry["metadata"]["reference"] == charge.reference
    assert entry["metadata"]["trip_id"] == str(charge.trip_id)
    assert entry["capture_count"] == 1


async def test_metadata_stripe_cannot_hold_is_left_out(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """Caller keys over Stripe's 40 characters (ours allow 64) do not make the charge fail."""
    charge = attempt(metadata={"k" * 41: "long", "note": "kept", "a[b]": "bracket"})

    result = await gateway.charge(charge)

    assert result.status is PaymentStatus.SUCCESS
    [entry] = await ledger(sandbox, charge.payment_id)
    assert entry["metadata"]["note"] == "kept"
    assert "k" * 41 not in entry["metadata"] and "a[b]" not in entry["metadata"]


async def test_the_same_attempt_twice_captures_once(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """The payment's key goes out as Idempotency-Key: a retry gets the same PaymentIntent."""
    charge = attempt()

    first = await gateway.charge(charge)
    second = await gateway.charge(charge)

    assert second.gateway_reference == first.gateway_reference
    assert [entry["capture_count"] for entry in await ledger(sandbox, charge.payment_id)] == [1]


async def test_decline_is_failed_with_the_decline_code(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """A 402 card_declined is a FAILED result, not an error, with the PaymentIntent id."""
    charge = attempt("decline")

    result = await gateway.charge(charge)
    looked_up = await gateway.lookup_charge(charge)

    assert result.status is PaymentStatus.FAILED
    assert result.failure_reason == "generic_decline"
    assert result.gateway_reference == (await ledger(sandbox, charge.payment_id))[0]["id"]
    assert (looked_up.status, looked_up.failure_reason) == (
        PaymentStatus.FAILED,
        "generic_decline",
    )


async def test_payment_method_metadata_overrides_the_default(gateway: StripeGateway) -> None:
    """metadata payment_method is the PaymentMethod confirmed with (here one declining)."""
    result = await gateway.charge(attempt(metadata={"payment_method": "pm_card_chargeDeclined"}))
    action = await gateway.charge(
        attempt(metadata={"payment_method": "pm_card_authenticationRequired"})
    )

    assert result.status is PaymentStatus.FAILED
    assert (action.status, action.failure_reason) == (PaymentStatus.FAILED, "requires_action")


async def test_pending_charge_is_success_once_the_processor_settles(
    gateway: StripeGateway,
) -> None:
    """processing -> PENDING; after the delay lookup_charge (by id or by key) says SUCCESS."""
    charge = attempt("pending")

    result = await gateway.charge(charge)
    await asyncio.sleep(DELAY + 0.2)
    by_id = await gateway.lookup_charge(replace(charge, gateway_reference=result.gateway_reference))
    by_key = await gateway.lookup_charge(charge)

    assert result.status is PaymentStatus.PENDING
    assert by_id.status is PaymentStatus.SUCCESS
    assert (by_key.status, by_key.gateway_reference) == (
        PaymentStatus.SUCCESS,
        result.gateway_reference,
    )


async def test_processor_500_is_unavailable(gateway: StripeGateway, sandbox: Sandbox) -> None:
    """fail: GatewayUnavailableError (retry later), not an auth problem."""
    await sandbox.set_fault("processor", "fail")

    with pytest.raises(GatewayUnavailableError) as caught:
        await gateway.charge(attempt())

    assert not isinstance(caught.value, GatewayAuthError)
    assert caught.value.headers["Retry-After"]


async def test_processor_down_is_unavailable(gateway: StripeGateway, sandbox: Sandbox) -> None:
    """Connection refused: GatewayUnavailableError."""
    await sandbox.set_fault("processor", "down")

    with pytest.raises(GatewayUnavailableError):
        await gateway.charge(attempt())


async def test_slower_than_the_timeout_is_unavailable(sandbox: Sandbox) -> None:
    """slow beyond STRIPE_TIMEOUT_SECONDS: the call gives up in time and says unavailable."""
    await sandbox.set_fault("processor", "slow", delay_seconds=1.5)
    adapter = StripeGateway(gateway_settings(sandbox, stripe_timeout_seconds=0.3))
    try:
        started = time.perf_counter()
        with pytest.raises(GatewayUnavailableError):
            await adapter.charge(attempt())
        assert time.perf_counter() - started < 1.2
    finally:
        await adapter.aclose()


async def test_timeout_after_capture_then_lookup_finds_the_one_capture(sandbox: Sandbox) -> None:
    """The answer is lost after the capture; lookup_charge with the same key recovers SUCCESS."""
    await sandbox.set_fault("processor", "timeout_after_capture")
    adapter = StripeGateway(gateway_settings(sandbox, stripe_timeout_seconds=0.4))
    charge = attempt()
    try:
        with pytest.raises(GatewayUnavailableError):
            await adapter.charge(charge)
        result = await adapter.lookup_charge(charge)
    finally:
        await adapter.aclose()

    assert result.status is PaymentStatus.SUCCESS
    [entry] = await ledger(sandbox, charge.payment_id)
    assert (entry["id"], entry["capture_count"]) == (result.gateway_reference, 1)


async def test_a_concurrent_retry_is_unavailable_not_a_second_charge(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """409 idempotency_key_in_use while the first is slow: GatewayUnavailableError."""
    await sandbox.set_fault("processor", "slow", delay_seconds=0.4)
    charge = attempt()

    first, second = await asyncio.gather(
        gateway.charge(charge), gateway.charge(charge), return_exceptions=True
    )

    outcomes = sorted(type(outcome).__name__ for outcome in (first, second))
    assert outcomes == ["ChargeResult", "GatewayUnavailableError"]
    assert [entry["capture_count"] for entry in await ledger(sandbox, charge.payment_id)] == [1]


async def test_wrong_api_key_is_an_auth_error(sandbox: Sandbox) -> None:
    """401 from the processor: GatewayAuthError, which an operator must fix."""
    adapter = StripeGateway(gateway_settings(sandbox, stripe_api_key="sk_test_wrong"))
    try:
        with pytest.raises(GatewayAuthError):
            await adapter.charge(attempt())
    finally:
        await adapter.aclose()


# --- refunds ---------------------------------------------------------------------------


async def paid(gateway: StripeGateway) -> tuple[ChargeAttempt, str]:
    charge = attempt()
    result = await gateway.charge(charge)
    assert result.status is PaymentStatus.SUCCESS and result.gateway_reference
    return charge, result.gateway_reference


async def test_refunds_succeed_and_an_over_refund_fails(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """Partial then the rest SUCCEEDED; more than what remains is a FAILED refund."""
    charge, reference = await paid(gateway)

    part = await gateway.refund(refund_attempt(charge, reference, "4.00"))
    rest = await gateway.refund(refund_attempt(charge, reference, "6.50"))
    over = await gateway.refund(refund_attempt(charge, reference, "0.01"))

    assert part.status is rest.status is RefundStatus.SUCCEEDED
    assert part.gateway_reference is not None and part.gateway_reference.startswith("re_")
    assert (over.status, over.failure_reason) == (RefundStatus.FAILED, "charge_already_refunded")
    [entry] = await ledger(sandbox, charge.payment_id)
    assert entry["refunded"] == 1050


async def test_refund_of_a_payment_stripe_never_saw_is_failed(gateway: StripeGateway) -> None:
    """No PaymentIntent id (an imported payment) or an unknown one: FAILED, nothing moved."""
    charge = attempt()

    no_id = await gateway.refund(refund_attempt(charge, None, "1.00"))
    unknown = await gateway.refund(refund_attempt(charge, "pi_unknown", "1.00"))

    assert (no_id.status, no_id.failure_reason) == (RefundStatus.FAILED, "no_processor_reference")
    assert (unknown.status, unknown.failure_reason) == (RefundStatus.FAILED, "resource_missing")


async def test_refund_declined_by_the_processor_is_failed(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """decline: the refund comes back failed with Stripe's failure reason."""
    charge, reference = await paid(gateway)
    await sandbox.set_fault("processor", "decline")

    result = await gateway.refund(refund_attempt(charge, reference, "5.00"))

    assert (result.status, result.failure_reason) == (RefundStatus.FAILED, "declined")


async def test_pending_refund_is_processing_then_succeeded(
    gateway: StripeGateway, sandbox: Sandbox
) -> None:
    """pending -> PROCESSING; lookup_refund after the delay (by id or by key) -> SUCCEEDED."""
    charge, reference = await paid(gateway)
    await sandbox.set_fault("processor", "pending", delay_seconds=DELAY)
    request = refund_attempt(charge, reference, "10.50")

    result = await gateway.refund(request)
    await asyncio.sleep(DELAY + 0.2)
    by_id = await gateway.lookup_refund(
        replace(request, gateway_reference=result.gateway_reference)
    )
    by_key = await gateway.lookup_refund(request)

    assert result.status is RefundStatus.PROCESSING
    assert by_id.status is RefundStatus.SUCCEEDED
    assert (by_key.status, by_key.gateway_reference) == (
        RefundStatus.SUCCEEDED,
        result.gateway_reference,
    )


async def test_processor_record_sums_captures_and_refunds(gateway: StripeGateway) -> None:
    """Captured 10.50 and refunded 4.00 in major units, one capture, partially refunded."""
    charge, reference = await paid(gateway)
    await gateway.refund(refund_attempt(charge, reference, "4.00"))

    record = await gateway.processor_record(replace(charge, gateway_reference=reference))
    unknown = await gateway.processor_record(replace(charge, gateway_reference="pi_missing"))
    no_id = await gateway.processor_record(charge)

    assert record is not None
    assert (record.gateway_reference, record.captured, record.refunded, record.captures) == (
        reference,
        Decimal("10.50"),
        Decimal("4.00"),
        1,
    )
    assert record.status is PaymentStatus.PARTIALLY_REFUNDED
    assert unknown is None and no_id is None


# --- webhooks --------------------------------------------------------------------------


@pytest.fixture
async def delivered(sandbox: Sandbox) -> AsyncIterator[list[tuple[bytes, dict[str, str]]]]:
    """What the sandbox processor POSTs to a loopback receiver, signed with WEBHOOK_SECRET."""
    received: list[tuple[bytes, dict[str, str]]] = []
    app = FastAPI()

    @app.post("/hooks")
    async def hook(request: Request) -> Response:
        received.append((await request.body(), dict(request.headers)))
        return Response(status_code=200)

    server = PeerServer("receiver", app, "127.0.0.1", 0, log_level=None)
    await server.start()
    sandbox.processor.webhook_url = f"{server.url}/hooks"
    sandbox.processor.webhook_secret = WEBHOOK_SECRET
    try:
        yield received
    finally:
        sandbox.processor.webhook_url = sandbox.processor.webhook_secret = None
        await server.stop()


async def wait_for_events(received: list[Any], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(received) < count:
        assert time.monotonic() < deadline, "webhook not delivered"
        await asyncio.sleep(0.02)


async def test_parse_webhook_accepts_sandbox_signed_events(
    gateway: StripeGateway, delivered: list[tuple[bytes, dict[str, str]]]
) -> None:
    """payment_intent.succeeded and refund.created map to our payment and refund ids."""
    charge, reference = await paid(gateway)
    refund = refund_attempt(charge, reference, "1.00")
    await gateway.refund(refund)
    await wait_for_events(delivered, 2)

    events = [gateway.parse_webhook(body, headers) for body, headers in delivered]

    payment_event = next(e for e in events if e is not None and e.kind == "payment")
    refund_event = next(e for e in events if e is not None and e.kind == "refund")
    assert payment_event.event_id.startswith("evt_")
    assert (payment_event.gateway_reference, payment_event.payment_id) == (
        reference,
        charge.payment_id,
    )
    assert payment_event.payment_status is PaymentStatus.SUCCESS
    assert (refund_event.refund_id, refund_event.payment_id) == (
        refund.refund_id,
        charge.payment_id,
    )
    assert refund_event.refund_status is RefundStatus.SUCCEEDED


async def test_parse_webhook_maps_a_payment_failure(
    gateway: StripeGateway, delivered: list[tuple[bytes, dict[str, str]]]
) -> None:
    """payment_intent.payment_failed is FAILED with the decline code."""
    charge = attempt("decline")
    await gateway.charge(charge)
    await wait_for_events(delivered, 1)

    event = gateway.parse_webhook(*delivered[0])

    assert event is not None
    assert (event.kind, event.payment_id, event.payment_status, event.failure_reason) == (
        "payment",
        charge.payment_id,
        PaymentStatus.FAILED,
        "generic_decline",
    )


async def test_parse_webhook_rejects_forged_stale_and_tampered_events(
    gateway: StripeGateway, delivered: list[tuple[bytes, dict[str, str]]]
) -> None:
    """Another secret, a timestamp over 5 minutes old, an edited body, no header: refused."""
    await gateway.charge(attempt())
    await wait_for_events(delivered, 1)
    body, headers = delivered[0]
    text = body.decode()
    forged = {"Stripe-Signature": sign_payload(text, "whsec_not_ours")}
    stale = {"Stripe-Signature": sign_payload(text, WEBHOOK_SECRET, int(time.time()) - 301)}
    tampered = body.replace(b'"amount": 1050', b'"amount": 1')

    assert gateway.parse_webhook(body, headers) is not None
    assert tampered != body
    for payload, bad_headers in (
        (body, forged),
        (body, stale),
        (tampered, headers),
        (body, {}),
        (body, {"Stripe-Signature": "garbage"}),
    ):
        with pytest.raises(InvalidWebhookError):
            gateway.parse_webhook(payload, bad_headers)


async def test_parse_webhook_ignores_other_event_types(gateway: StripeGateway) -> None:
    """A verified event we do not act on (customer.created) is None."""
    payload = json.dumps(
        {
            "id": "evt_other",
            "object": "event",
            "type": "customer.created",
            "data": {"object": {"id": "cus_1", "object": "customer", "metadata": {}}},
        }
    )

    headers = {"stripe-signature": sign_payload(payload, WEBHOOK_SECRET)}

    assert gateway.parse_webhook(payload.encode(), headers) is None


async def test_processor_calls_leave_no_responses_to_the_collector(gateway: StripeGateway) -> None:
    """The SDK talks through our peer transport: each response is freed as soon as it is
    read (httpx.AsyncClient's left every one in a reference cycle for the collector)."""
    await gateway.charge(attempt())  # the connection pool is warm
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            result = await gateway.charge(attempt())
            assert result.status is PaymentStatus.SUCCESS
        left = [obj for obj in gc.get_objects() if isinstance(obj, httpx.Response)]
    finally:
        gc.enable()
    assert left == []
