"""The sandbox processor over real HTTP: Stripe's wire format, idempotency, faults, webhooks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI, Request, Response

from payment_sandbox import PeerServer, Sandbox

API_KEY = "sk_test_sandbox"
WEBHOOK_SECRET = "whsec_test_made_up"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def pi_form(**overrides: str) -> dict[str, str]:
    """A server-side confirm the processor accepts, as the Stripe adapter sends it."""
    form = {
        "amount": "1050",
        "currency": "inr",
        "confirm": "true",
        "payment_method": "pm_card_visa",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[payment_id]": str(uuid.uuid4().int % 1_000_000),
    }
    form.update(overrides)
    return {key: value for key, value in form.items() if value != "<omit>"}


def key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def create(
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    form: dict[str, str],
    idempotency_key: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = dict(AUTH)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return await client.post(
        f"{sandbox.processor_url}/v1/payment_intents", data=form, headers=headers, **kwargs
    )


async def refund(
    client: httpx.AsyncClient, sandbox: Sandbox, form: dict[str, str], idempotency_key: str
) -> httpx.Response:
    return await client.post(
        f"{sandbox.processor_url}/v1/refunds",
        data=form,
        headers={**AUTH, "Idempotency-Key": idempotency_key},
    )


async def ledger(client: httpx.AsyncClient, sandbox: Sandbox, **params: str) -> dict[str, Any]:
    response = await client.get(f"{sandbox.control_url}/processor/ledger", params=params)
    assert response.status_code == 200
    return response.json()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- charges and Stripe's refusals ---------------------------------------------------


async def test_confirmed_payment_intent_succeeds_with_one_capture(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A confirm=true create answers a succeeded PaymentIntent whose charge captured it all."""
    form = pi_form(**{"metadata[payment_id]": "41"})

    response = await create(client, sandbox, form, key())

    assert response.status_code == 200
    intent = response.json()
    assert intent["object"] == "payment_intent"
    assert intent["id"].startswith("pi_")
    assert (intent["status"], intent["amount"], intent["currency"]) == ("succeeded", 1050, "inr")
    assert intent["latest_charge"].startswith("ch_")
    assert intent["metadata"] == {"payment_id": "41"}
    entry = (await ledger(client, sandbox, payment_id="41"))["payment_intents"][0]
    assert (entry["captured"], entry["capture_count"], entry["refunded"]) == (1050, 1, 0)


async def test_expand_latest_charge_shows_the_captured_charge(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """GET with expand[]=latest_charge embeds the charge object."""
    intent = (await create(client, sandbox, pi_form(), key())).json()

    response = await client.get(
        f"{sandbox.processor_url}/v1/payment_intents/{intent['id']}",
        params={"expand[]": "latest_charge"},
        headers=AUTH,
    )

    charge = response.json()["latest_charge"]
    assert (charge["object"], charge["amount_captured"], charge["status"]) == (
        "charge",
        1050,
        "succeeded",
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer pk_test_public"}, {"Authorization": "Basic xyz"}],
    ids=["missing", "publishable key", "not bearer"],
)
async def test_requests_without_a_secret_test_key_are_401(
    sandbox: Sandbox, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Every API call needs `Authorization: Bearer sk_test_...`; nothing is created otherwise."""
    response = await client.post(
        f"{sandbox.processor_url}/v1/payment_intents", data=pi_form(), headers=headers
    )

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await ledger(client, sandbox))["count"] == 0


async def test_unknown_parameter_is_400_parameter_unknown(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """A parameter Stripe does not take is refused with its name, top level or nested."""
    top = await create(client, sandbox, pi_form(capture="now"), key())
    nested = await create(
        client, sandbox, pi_form(**{"automatic_payment_methods[foo]": "1"}), key()
    )

    assert top.status_code == nested.status_code == 400
    assert top.json()["error"]["code"] == "parameter_unknown"
    assert top.json()["error"]["param"] == "capture"
    assert nested.json()["error"]["param"] == "automatic_payment_methods[foo]"
    assert (await ledger(client, sandbox))["count"] == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"automatic_payment_methods[allow_redirects]": "always"},
        {"automatic_payment_methods[allow_redirects]": "<omit>"},
        {
            "automatic_payment_methods[enabled]": "<omit>",
            "automatic_payment_methods[allow_redirects]": "<omit>",
        },
    ],
    ids=["always", "allow_redirects omitted", "automatic_payment_methods omitted"],
)
async def test_confirm_that_allows_redirects_needs_a_return_url(
    sandbox: Sandbox, client: httpx.AsyncClient, overrides: dict[str, str]
) -> None:
    """Redirect-capable automatic payment methods and no return_url: Stripe's 400."""
    response = await create(client, sandbox, pi_form(**overrides), key())
    with_url = await create(
        client, sandbox, pi_form(**overrides, return_url="https://example.test/back"), key()
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "return_url"
    assert "return_url" in response.json()["error"]["message"]
    assert with_url.status_code == 200


@pytest.mark.parametrize("amount", ["0", "-5", "10.50", "ten"])
async def test_amount_must_be_an_integer_of_at_least_one(
    sandbox: Sandbox, client: httpx.AsyncClient, amount: str
) -> None:
    """Minor units only: zero, negative and fractional amounts are 400 and save nothing."""
    idempotency_key = key()

    refused = await create(client, sandbox, pi_form(amount=amount), idempotency_key)
    fixed = await create(client, sandbox, pi_form(), idempotency_key)

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "amount"
    assert fixed.status_code == 200  # a refused request saved nothing under its key
    assert "idempotent-replayed" not in fixed.headers


async def test_declining_payment_method_answers_402_with_the_payment_intent(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """pm_card_chargeDeclined: 402 card_declined, the PaymentIntent embedded, nothing captured."""
    response = await create(
        client, sandbox, pi_form(payment_method="pm_card_chargeDeclined"), key()
    )

    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
    )
    assert error["payment_intent"]["status"] == "requires_payment_method"
    entry = (await ledger(client, sandbox))["payment_intents"][0]
    assert (entry["id"], entry["captured"], entry["capture_count"]) == (
        error["payment_intent"]["id"],
        0,
        0,
    )


async def test_simulate_metadata_forces_the_outcome(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """metadata[simulate] = decline | pending | success decides the charge."""
    declined = await create(client, sandbox, pi_form(**{"metadata[simulate]": "decline"}), key())
    pending = await create(client, sandbox, pi_form(**{"metadata[simulate]": "pending"}), key())
    success = await create(client, sandbox, pi_form(**{"metadata[simulate]": "success"}), key())

    assert declined.status_code == 402
    assert pending.json()["status"] == "processing"
    assert success.json()["status"] == "succeeded"


# --- idempotency -----------------------------------------------------------------------


async def test_same_key_and_parameters_replay_the_saved_answer(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """The second request gets the first body, marked Idempotent-Replayed; one capture only."""
    form, idempotency_key = pi_form(), key()

    first = await create(client, sandbox, form, idempotency_key)
    second = await create(client, sandbox, dict(reversed(form.items())), idempotency_key)

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    entry = (await ledger(client, sandbox))["payment_intents"]
    assert [(e["id"], e["capture_count"]) for e in entry] == [(first.json()["id"], 1)]


async def test_a_decline_is_replayed_as_the_same_402(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Errors that ran the endpoint are saved too: the same decline comes back."""
    form, idempotency_key = pi_form(**{"metadata[simulate]": "decline"}), key()

    first = await create(client, sandbox, form, idempotency_key)
    second = await create(client, sandbox, form, idempotency_key)

    assert first.status_code == second.status_code == 402
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert (await ledger(client, sandbox))["count"] == 1


async def test_same_key_with_other_parameters_is_400_idempotency_error(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Reusing a key for a different request is refused and changes nothing."""
    idempotency_key = key()
    await create(client, sandbox, pi_form(amount="1050"), idempotency_key)

    response = await create(client, sandbox, pi_form(amount="2000"), idempotency_key)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "idempotency_error"
    assert (await ledger(client, sandbox))["count"] == 1


async def test_an_overlong_idempotency_key_is_400(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Stripe takes keys of up to 255 characters."""
    response = await create(client, sandbox, pi_form(), "k" * 256)

    assert response.status_code == 400
    assert (await ledger(client, sandbox))["count"] == 0


async def test_keys_belong_to_one_api_key(sandbox: Sandbox, client: httpx.AsyncClient) -> None:
    """Another account's request with the same key is a request of its own."""
    form, idempotency_key = pi_form(), key()
    first = await create(client, sandbox, form, idempotency_key)

    other = await client.post(
        f"{sandbox.processor_url}/v1/payment_intents",
        data=form,
        headers={"Authorization": "Bearer sk_test_other", "Idempotency-Key": idempotency_key},
    )

    assert other.status_code == 200
    assert other.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in other.headers


async def test_concurrent_requests_with_one_key_capture_once(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """While the first is slow, a second with the same key gets 409 idempotency_key_in_use."""
    await sandbox.set_fault("processor", "slow", delay_seconds=0.3)
    form, idempotency_key = pi_form(), key()

    answers = await asyncio.gather(
        *(create(client, sandbox, form, idempotency_key) for _ in range(3))
    )

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 409, 409]
    conflict = next(answer for answer in answers if answer.status_code == 409)
    assert conflict.json()["error"]["code"] == "idempotency_key_in_use"
    entries = (await ledger(client, sandbox))["payment_intents"]
    assert [entry["capture_count"] for entry in entries] == [1]
    replay = await create(client, sandbox, form, idempotency_key)
    assert replay.headers["idempotent-replayed"] == "true"


# --- fault modes -----------------------------------------------------------------------


async def test_decline_mode_declines_every_charge(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """decline: even a good card and simulate=success are declined."""
    await sandbox.set_fault("processor", "decline")

    response = await create(client, sandbox, pi_form(**{"metadata[simulate]": "success"}), key())

    assert response.status_code == 402
    assert (await ledger(client, sandbox))["captured_total"] == 0


async def test_pending_mode_settles_after_the_delay(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """pending: `processing` now, `succeeded` with a capture `delay_seconds` later."""
    await sandbox.set_fault("processor", "pending", delay_seconds=0.2)

    intent = (await create(client, sandbox, pi_form(), key())).json()
    before = await ledger(client, sandbox)

    async def settled() -> bool:
        answer = await client.get(
            f"{sandbox.processor_url}/v1/payment_intents/{intent['id']}", headers=AUTH
        )
        return answer.json()["status"] == "succeeded"

    assert intent["status"] == "processing"
    assert before["payment_intents"][0]["capture_count"] == 0
    await wait_for(settled)
    assert (await ledger(client, sandbox))["payment_intents"][0]["captured"] == 1050


async def test_fail_mode_answers_500_and_saves_nothing(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """fail: a 500 api_error before anything happens; the same key works once it is normal."""
    await sandbox.set_fault("processor", "fail")
    form, idempotency_key = pi_form(), key()

    failed = await create(client, sandbox, form, idempotency_key)
    await sandbox.set_fault("processor", "normal")
    retried = await create(client, sandbox, form, idempotency_key)

    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert (await ledger(client, sandbox))["count"] == 1


async def test_slow_mode_answers_after_the_delay(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """slow: the answer comes `delay_seconds` late, and normal."""
    await sandbox.set_fault("processor", "slow", delay_seconds=0.25)

    started = time.perf_counter()
    response = await create(client, sandbox, pi_form(), key())

    assert response.status_code == 200
    assert time.perf_counter() - started >= 0.2


async def test_timeout_after_capture_captures_once_and_replays_the_success(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """The money moves and the answer is saved, the client times out; the retry gets it."""
    await sandbox.set_fault("processor", "timeout_after_capture")
    form, idempotency_key = pi_form(), key()

    with pytest.raises(httpx.ReadTimeout):
        await create(client, sandbox, form, idempotency_key, timeout=0.5)
    retried = await create(client, sandbox, form, idempotency_key)

    assert retried.status_code == 200
    assert retried.json()["status"] == "succeeded"
    assert retried.headers["idempotent-replayed"] == "true"
    entries = (await ledger(client, sandbox))["payment_intents"]
    assert [(e["id"], e["capture_count"]) for e in entries] == [(retried.json()["id"], 1)]


async def test_processor_modes_are_refused_for_other_peers(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """decline/pending/timeout_after_capture mean nothing to the Trip service: 422."""
    trip = await client.put(f"{sandbox.control_url}/trip/faults", json={"mode": "decline"})
    processor = await client.put(
        f"{sandbox.control_url}/processor/faults",
        json={"mode": "pending", "delay_seconds": 0.1},
    )

    assert trip.status_code == 422
    assert processor.status_code == 200
    assert processor.json()["fault"]["mode"] == "pending"


async def test_down_and_up_close_and_reopen_the_processor_port(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """down refuses connections; up serves again on the same port, its ledger kept."""
    await create(client, sandbox, pi_form(), key())
    await sandbox.set_fault("processor", "down")
    with pytest.raises(httpx.ConnectError):
        await create(client, sandbox, pi_form(), key())
    await sandbox.set_fault("processor", "up")

    assert (await create(client, sandbox, pi_form(), key())).status_code == 200
    assert sandbox.status()["processor"]["listening"] is True
    assert (await ledger(client, sandbox))["count"] == 2


async def test_pending_payment_settles_while_the_processor_is_unreachable(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Like a real processor, settling does not depend on us reaching it."""
    await sandbox.set_fault("processor", "pending", delay_seconds=0.1)
    intent = (await create(client, sandbox, pi_form(), key())).json()

    await sandbox.set_fault("processor", "down")
    await asyncio.sleep(0.3)
    await sandbox.set_fault("processor", "up")
    answer = await client.get(
        f"{sandbox.processor_url}/v1/payment_intents/{intent['id']}", headers=AUTH
    )

    assert answer.json()["status"] == "succeeded"


# --- refunds ---------------------------------------------------------------------------


async def charged(client: httpx.AsyncClient, sandbox: Sandbox) -> dict[str, Any]:
    response = await create(client, sandbox, pi_form(), key())
    assert response.status_code == 200
    return response.json()


async def test_refunds_up_to_the_captured_amount(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """Partial refunds succeed until the charge is used up; more is 400 amount_too_large."""
    intent = await charged(client, sandbox)
    base = {"payment_intent": intent["id"], "metadata[refund_id]": "9"}

    part = await refund(client, sandbox, {**base, "amount": "1000"}, key())
    too_much = await refund(client, sandbox, {**base, "amount": "100"}, key())
    rest = await refund(client, sandbox, base, key())  # no amount: what remains
    listed = await client.get(
        f"{sandbox.processor_url}/v1/refunds",
        params={"payment_intent": intent["id"]},
        headers=AUTH,
    )

    assert (part.json()["status"], part.json()["amount"]) == ("succeeded", 1000)
    assert too_much.status_code == 400
    assert too_much.json()["error"]["code"] == "amount_too_large"
    assert rest.json()["amount"] == 50
    assert [item["amount"] for item in listed.json()["data"]] == [50, 1000]
    entry = (await ledger(client, sandbox))["payment_intents"][0]
    assert entry["refunded"] == 1050
    assert [r["metadata"] for r in entry["refunds"]] == [{"refund_id": "9"}] * 2


async def test_refund_decline_and_pending_modes(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """decline: the refund fails (its amount stays refundable); pending: it succeeds later."""
    intent = await charged(client, sandbox)
    await sandbox.set_fault("processor", "decline")
    failed = await refund(client, sandbox, {"payment_intent": intent["id"]}, key())
    await sandbox.set_fault("processor", "pending", delay_seconds=0.2)
    pending = await refund(client, sandbox, {"payment_intent": intent["id"]}, key())

    async def settled() -> bool:
        answer = await client.get(
            f"{sandbox.processor_url}/v1/refunds/{pending.json()['id']}", headers=AUTH
        )
        return answer.json()["status"] == "succeeded"

    assert (failed.json()["status"], failed.json()["failure_reason"]) == ("failed", "declined")
    assert (pending.json()["status"], pending.json()["amount"]) == ("pending", 1050)
    await wait_for(settled)
    assert (await ledger(client, sandbox))["payment_intents"][0]["refunded"] == 1050


async def test_refund_timeout_after_capture_is_replayed(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """The refund happens, the client times out, the same key gets the saved refund."""
    intent = await charged(client, sandbox)
    await sandbox.set_fault("processor", "timeout_after_capture")
    idempotency_key = key()

    with pytest.raises(httpx.ReadTimeout):
        await client.post(
            f"{sandbox.processor_url}/v1/refunds",
            data={"payment_intent": intent["id"], "amount": "500"},
            headers={**AUTH, "Idempotency-Key": idempotency_key},
            timeout=0.5,
        )
    retried = await refund(
        client, sandbox, {"payment_intent": intent["id"], "amount": "500"}, idempotency_key
    )

    assert retried.json()["status"] == "succeeded"
    assert retried.headers["idempotent-replayed"] == "true"
    assert (await ledger(client, sandbox))["payment_intents"][0]["refunded"] == 500


# --- ledger and reset ------------------------------------------------------------------


async def test_ledger_filters_by_payment_id_and_reset_clears_it(
    sandbox: Sandbox, client: httpx.AsyncClient
) -> None:
    """GET /processor/ledger?payment_id= shows one payment; POST /reset forgets everything."""
    await create(client, sandbox, pi_form(**{"metadata[payment_id]": "1"}), key())
    await create(client, sandbox, pi_form(**{"metadata[payment_id]": "2"}), key())

    one = await ledger(client, sandbox, payment_id="2")
    await client.post(f"{sandbox.control_url}/reset")
    after = await ledger(client, sandbox)

    assert [entry["payment_id"] for entry in one["payment_intents"]] == ["2"]
    assert one["captured_total"] == 1050
    assert after == {"count": 0, "captured_total": 0, "refunded_total": 0, "payment_intents": []}


# --- webhooks --------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint on loopback that records bodies and can fail the first requests."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.fail_next = 0
        app = FastAPI()

        @app.post("/hooks")
        async def hook(request: Request) -> Response:
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response(status_code=503)
            self.received.append((await request.body(), request.headers["stripe-signature"]))
            return Response(status_code=200)

        self.server = PeerServer("receiver", app, "127.0.0.1", 0, log_level=None)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.received]


@pytest.fixture
async def receiver(sandbox: Sandbox) -> AsyncIterator[Receiver]:
    """The processor signs events to a loopback receiver for this test only."""
    hooks = Receiver()
    await hooks.server.start()
    sandbox.processor.webhook_url = f"{hooks.server.url}/hooks"
    sandbox.processor.webhook_secret = WEBHOOK_SECRET
    sandbox.processor.webhook_backoff_seconds = 0.05
    try:
        yield hooks
    finally:
        sandbox.processor.webhook_url = sandbox.processor.webhook_secret = None
        await hooks.server.stop()


async def test_webhooks_are_signed_as_stripe_signs_them(
    sandbox: Sandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """payment_intent.succeeded and payment_failed verify with stripe.Webhook.construct_event."""
    ok = (await create(client, sandbox, pi_form(), key())).json()
    await create(client, sandbox, pi_form(**{"metadata[simulate]": "decline"}), key())

    async def two() -> bool:
        return len(receiver.received) >= 2

    await wait_for(two)
    events = [
        stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
        for body, signature in receiver.received
    ]
    by_type = {event["type"]: event for event in events}
    assert set(by_type) == {"payment_intent.succeeded", "payment_intent.payment_failed"}
    assert by_type["payment_intent.succeeded"]["data"]["object"]["id"] == ok["id"]
    assert len({event["id"] for event in events}) == 2
    assert all(event["id"].startswith("evt_") for event in events)
    body, signature = receiver.received[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_someone_else")


async def test_pending_settlements_send_webhooks(
    sandbox: Sandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """A processing charge and a pending refund each announce their success."""
    await sandbox.set_fault("processor", "pending", delay_seconds=0.1)
    intent = (await create(client, sandbox, pi_form(), key())).json()

    async def succeeded() -> bool:
        return any(e["type"] == "payment_intent.succeeded" for e in receiver.events())

    await wait_for(succeeded)
    await refund(client, sandbox, {"payment_intent": intent["id"]}, key())

    async def refunded() -> bool:
        return any(e["type"] == "refund.updated" for e in receiver.events())

    await wait_for(refunded)
    update = next(e for e in receiver.events() if e["type"] == "refund.updated")
    assert update["data"]["object"]["status"] == "succeeded"
    assert update["data"]["object"]["payment_intent"] == intent["id"]


async def test_failed_deliveries_are_retried_a_bounded_number_of_times(
    sandbox: Sandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Two 503s, then delivered on the third attempt; the control API shows the attempts."""
    receiver.fail_next = 2

    await create(client, sandbox, pi_form(), key())

    async def delivered() -> bool:
        return len(receiver.received) == 1

    await wait_for(delivered)
    status = (await client.get(f"{sandbox.control_url}/processor/webhooks")).json()
    assert status["deliveries"][0]["attempts"] == 3
    assert status["deliveries"][0]["delivered"] is True
