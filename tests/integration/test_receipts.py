"""GET /v1/payments/{id}/receipt: JSON and printable HTML over a real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_service.jsonutil import dumps, loads

FAILED_PAYMENT_ID = 5  # seeds/rhfd_payments.csv: FAILED, 171.10, CARD
UNKNOWN_PAYMENT_ID = 987_654_321
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
PAYMENT_FIELDS = (
    "payment_id",
    "trip_id",
    "rider_id",
    "driver_id",
    "amount",
    "currency",
    "method",
    "status",
    "refunded_amount",
    "reference",
    "created_at",
    "updated_at",
    "kind",
    "parent_payment_id",
)


async def _success_payment(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/payments", params={"status": "SUCCESS", "limit": 1})
    assert response.status_code == 200
    return loads(response.content)["payments"][0]


async def _receipt(
    client: httpx.AsyncClient, payment_id: int, accept: str | None = None
) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    return await client.get(f"/v1/payments/{payment_id}/receipt", headers=headers)


async def _refund(
    client: httpx.AsyncClient, payment_id: int, key: str, amount: str, reason: str | None = None
) -> httpx.Response:
    """POST a refund; the amount goes out as an exact JSON number (`10.5`)."""
    body: dict[str, Any] = {"idempotency_key": key, "amount": Decimal(amount)}
    if reason is not None:
        body["reason"] = reason
    return await client.post(
        f"/v1/payments/{payment_id}/refund",
        content=dumps(body),
        headers={"Content-Type": "application/json"},
    )


async def test_json_receipt_has_the_payment_fields_and_exact_amounts(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """The JSON receipt carries the payment, RCP- id, RN- number and exact money numbers."""
    payment = await _success_payment(client)

    response = await _receipt(client, payment["payment_id"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "accept" in response.headers["vary"].lower()
    body = loads(response.content)
    assert {field: body[field] for field in PAYMENT_FIELDS} == payment
    assert body["receipt_id"] == "RCP-" + payment["reference"]
    ymd = payment["created_at"][:10].replace("-", "")
    assert body["receipt_number"] == f"RN-{ymd}-{payment['payment_id']:08d}"
    assert body["refunds"] == []
    assert body["net_amount"] == payment["amount"]
    assert isinstance(body["amount"], Decimal)
    assert body["charged"] is True
    assert body["issued_at"].endswith("Z")
    assert body["generated_at"].endswith("Z")
    # Money are JSON numbers written exactly, never strings or float noise.
    assert f'"amount":{payment["amount"]},' in response.text
    assert f'"net_amount":{payment["amount"]},' in response.text
    assert '"refunded_amount":0.00' in response.text


async def test_receipt_number_is_the_same_on_every_request(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """The number and issued_at are issued once; generated_at is the time of each answer."""
    payment = await _success_payment(client)

    first = loads((await _receipt(client, payment["payment_id"])).content)
    second = loads((await _receipt(client, payment["payment_id"])).content)
    html = await _receipt(client, payment["payment_id"], "text/html")

    assert second["receipt_number"] == first["receipt_number"]
    assert second["issued_at"] == first["issued_at"]
    assert second["generated_at"] >= first["generated_at"]
    assert first["receipt_number"] in html.text


async def test_concurrent_first_requests_agree_on_one_receipt(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """Ten simultaneous first requests get one number, and one receipt row is stored."""
    payment = await _success_payment(client)
    payment_id = payment["payment_id"]

    responses = await asyncio.gather(*(_receipt(client, payment_id) for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    bodies = [loads(r.content) for r in responses]
    assert len({b["receipt_number"] for b in bodies}) == 1
    assert len({b["issued_at"] for b in bodies}) == 1
    async with seeded.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT receipt_number FROM receipts WHERE payment_id = :id"),
                {"id": payment_id},
            )
        ).all()
    assert [row.receipt_number for row in rows] == [bodies[0]["receipt_number"]]


async def test_receipt_lists_refunds_and_the_net_amount(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """After a partial refund the receipt shows it and net_amount = amount − refunded."""
    payment = await _success_payment(client)
    payment_id = payment["payment_id"]
    number = loads((await _receipt(client, payment_id)).content)["receipt_number"]

    refund = await _refund(client, payment_id, "receipt-refund-1", "10.5", "late pickup")
    assert refund.status_code == 200, refund.text
    refund_body = loads(refund.content)

    body = loads((await _receipt(client, payment_id)).content)
    assert body["receipt_number"] == number
    assert body["status"] == "PARTIALLY_REFUNDED"
    assert body["refunded_amount"] == Decimal("10.50")
    assert body["net_amount"] == payment["amount"] - Decimal("10.50")
    assert body["refunds"] == [
        {
            "refund_id": refund_body["refund_id"],
            "amount": Decimal("10.50"),
            "reason": "late pickup",
            "created_at": refund_body["timestamp"],
        }
    ]

    html = (await _receipt(client, payment_id, "text/html")).text
    assert "late pickup" in html
    assert f"INR {payment['amount'] - Decimal('10.50'):,.2f}" in html
    assert "− INR 10.50" in html


async def test_failed_payment_still_has_a_receipt_marked_not_charged(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """A FAILED payment answers 200 with status FAILED, charged false and a not-charged note."""
    response = await _receipt(client, FAILED_PAYMENT_ID)

    assert response.status_code == 200
    body = loads(response.content)
    assert body["status"] == "FAILED"
    assert body["amount"] == Decimal("171.10")
    assert body["method"] == "CARD"
    assert body["charged"] is False
    assert body["receipt_number"] == f"RN-{body['created_at'][:10].replace('-', '')}-00000005"

    html = (await _receipt(client, FAILED_PAYMENT_ID, "text/html")).text
    assert "not charged" in html.lower()
    assert "INR 171.10" in html
    assert "INR 0.00" in html


async def test_html_receipt_is_a_self_contained_printable_page(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """text/html gives a page with the number and amount, print CSS and no external asset."""
    payment = await _success_payment(client)

    response = await _receipt(client, payment["payment_id"], HTML_ACCEPT)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "accept" in response.headers["vary"].lower()
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    number = loads((await _receipt(client, payment["payment_id"])).content)["receipt_number"]
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert number in page
    assert f"INR {payment['amount']:,.2f}" in page
    assert "@media print" in page
    assert "UTC" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?\s*(https?:)?//|@font-face", page, re.I)
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "<img" not in page.lower()


async def test_html_receipt_escapes_values(client: httpx.AsyncClient, seeded: AsyncEngine) -> None:
    """A refund reason holding markup is shown as text, never as HTML."""
    payment = await _success_payment(client)
    reason = '<script>alert(1)</script><img src=x onerror=alert(2)> & "q"'
    response = await _refund(client, payment["payment_id"], "receipt-xss", "1.00", reason)
    assert response.status_code == 200, response.text

    page = (await _receipt(client, payment["payment_id"], "text/html")).text

    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&amp; &#34;q&#34;" in page


@pytest.mark.parametrize("accept", [None, "application/json", "text/html"])
async def test_unknown_payment_is_a_404_problem(
    client: httpx.AsyncClient, seeded: AsyncEngine, accept: str | None
) -> None:
    """An unknown payment is a 404 problem+json, whatever representation was asked for."""
    response = await _receipt(client, UNKNOWN_PAYMENT_ID, accept)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 404
    assert problem["type"].endswith("/payment-not-found")
    assert str(UNKNOWN_PAYMENT_ID) in problem["detail"]
    async with seeded.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM receipts"))
    assert count == 0


@pytest.mark.parametrize("payment_id", ["0", "-3", "abc", str(2**63)])
async def test_bad_payment_id_is_a_422_problem(
    client: httpx.AsyncClient, seeded: AsyncEngine, payment_id: str
) -> None:
    """A payment id that is not a positive 64-bit integer is a 422 problem, never a 500."""
    response = await client.get(f"/v1/payments/{payment_id}/receipt")

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("text/html", "text/html"),
        ("TEXT/HTML; charset=utf-8", "text/html"),
        ("text/html;q=0.1, application/json", "application/json"),
        ("application/json;q=0.5, text/html;q=0.9", "text/html"),
        ("application/json;q=0.5, text/*", "text/html"),
        (HTML_ACCEPT, "text/html"),
        ("text/html, application/json", "application/json"),
        ("text/html;q=0, */*", "application/json"),
        ("application/json;q=0, text/html;q=0.2", "text/html"),
        ("text/html;q=abc, application/json;q=0.1", "application/json"),
        ("image/png", "application/json"),
        ("garbage", "application/json"),
    ],
)
async def test_accept_header_negotiates_json_or_html(
    client: httpx.AsyncClient, seeded: AsyncEngine, accept: str | None, expected: str
) -> None:
    """HTML only when the Accept header's q-values strictly prefer it; JSON otherwise."""
    response = await _receipt(client, FAILED_PAYMENT_ID, accept)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == expected


async def test_openapi_documents_json_html_and_problems(
    client: httpx.AsyncClient,
) -> None:
    """The route documents ReceiptRead as JSON, text/html, and its problem responses."""
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/payments/{payment_id}/receipt"]["get"]

    content = operation["responses"]["200"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/ReceiptRead")
    assert "text/html" in content
    for status in ("404", "422", "500"):
        assert "application/problem+json" in operation["responses"][status]["content"]
    assert operation["tags"] == ["receipts"]
