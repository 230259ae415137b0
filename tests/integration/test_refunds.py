"""Refunds: partial and full, idempotent, and never more than the amount under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import ROUND_DOWN, Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

CHARGE = "/v1/payments/charge"


@pytest.fixture
def paid(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> Callable[..., Awaitable[dict]]:
    """Make a payment through the API (SUCCESS unless told otherwise) and return it."""

    async def make(simulate: str | None = None) -> dict:
        payload: dict[str, object] = {
            "trip_id": new_trip_id(),
            "method": "CARD",
            "idempotency_key": f"pay-{new_trip_id()}",
        }
        if simulate:
            payload["metadata"] = {"simulate": simulate}
        response = await money_client.post(CHARGE, json=payload)
        assert response.status_code in (201, 202), response.text
        return response.json()

    return make


def refund_url(payment_id: int) -> str:
    return f"/v1/payments/{payment_id}/refund"


async def test_partial_then_full_refund(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """A partial refund leaves PARTIALLY_REFUNDED; refunding the rest makes it REFUNDED."""
    payment = await paid()
    amount = Decimal(str(payment["amount"]))
    first = await money_client.post(
        refund_url(payment["payment_id"]),
        json={"idempotency_key": "r-part", "amount": 1.25, "reason": "late pickup"},
    )
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["status"] == "PARTIALLY_REFUNDED" and data["reason"] == "late pickup"
    assert Decimal(str(data["refund_amount"])) == Decimal("1.25")
    assert Decimal(str(data["remaining_refundable"])) == amount - Decimal("1.25")
    assert set(data) >= {"refund_id", "payment_id", "timestamp"}
    rest = await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "r-rest"}
    )
    assert rest.status_code == 200
    assert rest.json()["status"] == "REFUNDED" and rest.json()["remaining_refundable"] == 0
    assert Decimal(str(rest.json()["refund_amount"])) == amount - Decimal("1.25")
    current = (await money_client.get(f"/v1/payments/{payment['payment_id']}")).json()
    assert current["status"] == "REFUNDED"
    assert Decimal(str(current["refunded_amount"])) == amount


async def test_refunded_payment_is_not_refundable(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """After a full refund, another refund is a 409."""
    payment = await paid()
    await money_client.post(refund_url(payment["payment_id"]), json={"idempotency_key": "full"})
    again = await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "full-2"}
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("simulate", ["decline", "pending"])
async def test_failed_and_pending_payments_are_not_refundable(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], simulate: str
) -> None:
    """Only SUCCESS and PARTIALLY_REFUNDED payments can be refunded (else 409)."""
    payment = await paid(simulate)
    response = await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": f"nr-{simulate}"}
    )
    assert response.status_code == 409
    assert payment["status"] in response.json()["detail"]


@pytest.mark.parametrize("amount", [0, -5, 0.001, 10.123])
async def test_bad_amounts_are_422_naming_what_remains(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], amount: float
) -> None:
    """Amounts <= 0 or with more than two decimals are refused, stating what remains."""
    payment = await paid()
    response = await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "bad-amt", "amount": amount}
    )
    assert response.status_code == 422, response.text
    assert str(payment["amount"]) in response.json()["detail"]


async def test_amount_over_what_remains_is_422(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """Asking for more than remains is a 422 stating the remaining amount; nothing changes."""
    payment = await paid()
    await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "some", "amount": 1}
    )
    remaining = Decimal(str(payment["amount"])) - 1
    response = await money_client.post(
        refund_url(payment["payment_id"]),
        json={"idempotency_key": "too-much", "amount": float(remaining + 1)},
    )
    assert response.status_code == 422
    assert response.json()["remaining_refundable"] == float(remaining)
    assert f"only {remaining}" in response.json()["detail"]


async def test_non_numeric_amount_is_422(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """A non-numeric amount is a validation problem."""
    payment = await paid()
    response = await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "nan", "amount": "abc"}
    )
    assert response.status_code == 422


async def test_unknown_payment_is_404(money_client: httpx.AsyncClient) -> None:
    """Refunding a payment that does not exist is a 404 problem."""
    response = await money_client.post(refund_url(99_999_999), json={"idempotency_key": "x"})
    assert response.status_code == 404


async def test_refund_replays_and_rejects_key_reuse(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], engine: AsyncEngine
) -> None:
    """Same key and body replays (one refund row); same key, other amount is a 422."""
    payment = await paid()
    url = refund_url(payment["payment_id"])
    first = await money_client.post(url, json={"idempotency_key": "rr", "amount": 2})
    again = await money_client.post(url, json={"amount": 2}, headers={"Idempotency-Key": "rr"})
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await money_client.post(url, json={"idempotency_key": "rr", "amount": 3})
    assert other.status_code == 422
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM refunds WHERE payment_id = :p"),
            {"p": payment["payment_id"]},
        )
    assert count == 1


async def test_twenty_five_concurrent_partial_refunds_never_exceed_the_amount(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], engine: AsyncEngine
) -> None:
    """25 concurrent refunds, each of a fifth of the amount: at most 5 succeed, sum <= amount."""
    payment = await paid()
    amount = Decimal(str(payment["amount"]))
    share = (amount / 5).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    responses = await asyncio.gather(
        *(
            money_client.post(
                refund_url(payment["payment_id"]),
                json={"idempotency_key": f"con-{i}", "amount": float(share)},
            )
            for i in range(25)
        )
    )
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 409, 422}, codes
    succeeded = [Decimal(str(r.json()["refund_amount"])) for r in responses if r.status_code == 200]
    assert sum(succeeded) <= amount
    assert len(succeeded) == 5
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT p.amount, p.refunded_amount, (SELECT sum(amount) FROM refunds r "
                    "WHERE r.payment_id = p.id) AS total FROM payments p WHERE p.id = :p"
                ),
                {"p": payment["payment_id"]},
            )
        ).one()
    assert row.refunded_amount == row.total == sum(succeeded) <= row.amount


async def test_concurrent_refunds_with_one_key_refund_once(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], engine: AsyncEngine
) -> None:
    """Ten concurrent identical refunds: one refund row, every answer the same."""
    payment = await paid()
    responses = await asyncio.gather(
        *(
            money_client.post(
                refund_url(payment["payment_id"]), json={"idempotency_key": "same", "amount": 1}
            )
            for _ in range(10)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM refunds WHERE payment_id = :p"),
            {"p": payment["payment_id"]},
        )
    assert count == 1


async def test_list_refunds(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """GET /refunds lists every refund with the totals."""
    payment = await paid()
    url = refund_url(payment["payment_id"])
    await money_client.post(url, json={"idempotency_key": "l1", "amount": 1.5, "reason": "a"})
    await money_client.post(url, json={"idempotency_key": "l2", "amount": 2.25})
    listing = await money_client.get(f"/v1/payments/{payment['payment_id']}/refunds")
    assert listing.status_code == 200
    data = listing.json()
    assert data["count"] == 2 and [r["amount"] for r in data["refunds"]] == [1.5, 2.25]
    assert data["total_refunded"] == 3.75
    missing = await money_client.get("/v1/payments/99999999/refunds")
    assert missing.status_code == 404


async def test_refund_writes_event_and_outbox_message(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]], engine: AsyncEngine
) -> None:
    """A refund appends a REFUND event and a 'refund' outbox message in its transaction."""
    payment = await paid()
    await money_client.post(
        refund_url(payment["payment_id"]), json={"idempotency_key": "ev", "amount": 1}
    )
    async with engine.connect() as connection:
        events = (
            await connection.execute(
                text(
                    "SELECT event_type, from_status, to_status FROM payment_events "
                    "WHERE payment_id = :p ORDER BY id"
                ),
                {"p": payment["payment_id"]},
            )
        ).all()
        messages = (
            await connection.execute(
                # Other tests enqueue bare messages for arbitrary payment ids: match this trip.
                text(
                    "SELECT message_type, payload FROM notification_outbox WHERE payment_id = :p "
                    "AND payload->>'trip_id' = :t ORDER BY id"
                ),
                {"p": payment["payment_id"], "t": str(payment["trip_id"])},
            )
        ).all()
    assert [tuple(e) for e in events][-1] == ("REFUND", "SUCCESS", "PARTIALLY_REFUNDED")
    assert [m.message_type for m in messages] == ["payment", "refund"]
    assert messages[1].payload["amount"] == Decimal("1.00")


async def test_refund_without_a_body_refunds_everything(
    money_client: httpx.AsyncClient, paid: Callable[..., Awaitable[dict]]
) -> None:
    """No body at all, only an Idempotency-Key header: the whole remaining amount."""
    payment = await paid()
    response = await money_client.post(
        refund_url(payment["payment_id"]), headers={"Idempotency-Key": "no-body"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "REFUNDED"
    assert response.json()["refund_amount"] == payment["amount"]
