"""The seed service's API over real HTTP against `payment-service serve`, as old clients call it."""

from __future__ import annotations

from decimal import Decimal

import httpx

from payment_sandbox.runner import Sandbox
from tests.e2e.conftest import ServiceProcess, run_smoke_script

UNPAID_TRIP = 1001  # seeds/README.md: 1001..1300 are COMPLETED and unpaid


async def test_seed_curl_lines_work_against_serve(
    service: ServiceProcess, api: httpx.AsyncClient, peers: Sandbox
) -> None:
    """Every seed endpoint answers as the seed documented it (health, list, get, charge, refund,
    receipt JSON and HTML, metrics), and scripts/test_payment_api.sh passes against it."""
    health = await api.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "UP" and health.json()["database_status"] == "UP"

    listing = await api.get("/v1/payments")
    assert listing.status_code == 200
    assert listing.json()["total"] == 350 and listing.json()["count"] == 100

    successes = await api.get("/v1/payments", params={"status": "SUCCESS", "limit": 10})
    assert successes.status_code == 200
    rows = successes.json()["payments"]
    assert len(rows) == 10 and {row["status"] for row in rows} == {"SUCCESS"}

    first = await api.get("/v1/payments/1")
    assert first.status_code == 200
    assert first.json()["amount"] == 99.01
    assert (first.json()["method"], first.json()["status"]) == ("CARD", "SUCCESS")

    charge_body = {"idempotency_key": "e2e-seed-charge", "trip_id": UNPAID_TRIP, "method": "CARD"}
    charged = await api.post(
        "/v1/payments/charge", json=charge_body, headers={"X-Request-ID": "e2e-seed-req"}
    )
    assert charged.status_code == 201, charged.text
    payment = charged.json()
    assert payment["trip_id"] == UNPAID_TRIP and payment["status"] == "SUCCESS"
    assert payment["payment_id"] > 350  # ids continue past the seed
    assert charged.headers["X-Request-ID"] == "e2e-seed-req"
    assert peers.trips.stats()["last_request_id"] == "e2e-seed-req"

    replayed = await api.post("/v1/payments/charge", json=charge_body)
    assert replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == charged.content

    payment_id = payment["payment_id"]
    refunded = await api.post(
        f"/v1/payments/{payment_id}/refund",
        json={"idempotency_key": "e2e-seed-refund", "amount": 1.00, "reason": "e2e"},
    )
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["status"] == "PARTIALLY_REFUNDED"
    assert Decimal(str(refunded.json()["remaining_refundable"])) == (
        Decimal(str(payment["amount"])) - 1
    )

    receipt = await api.get(f"/v1/payments/{payment_id}/receipt")
    assert receipt.status_code == 200
    assert receipt.json()["receipt_id"] == f"RCP-{payment['reference']}"
    again = await api.get(f"/v1/payments/{payment_id}/receipt")
    assert again.json()["receipt_number"] == receipt.json()["receipt_number"]

    page = await api.get(f"/v1/payments/{payment_id}/receipt", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert payment["reference"] in page.text

    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert 'payments_total{method="CARD",status="SUCCESS"}' in metrics.text

    output = await run_smoke_script(service, TRIP_ID=str(UNPAID_TRIP))
    assert f"charge (trip {UNPAID_TRIP})" not in output  # paid above: the script moved on
