"""Rate limiting, business metrics after real charges, and the documented settings."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx

from payment_service.app import create_app
from payment_service.settings import Settings
from tests.conftest import ROOT, make_settings


async def test_rate_limit_answers_429_problem_with_retry_after(database_url: str) -> None:
    """Past RATE_LIMIT_READ_PER_MINUTE a client gets 429 problem+json; /health stays exempt."""
    app = create_app(
        make_settings(database_url, rate_limit_enabled=True, rate_limit_read_per_minute=3),
        run_dispatcher=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = [(await client.get("/v1/payments/1")).status_code for _ in range(5)]
            limited = await client.get("/v1/payments?limit=1")
            health = await client.get("/health")
    assert 429 not in codes[:3] and codes[3:] == [429, 429]
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.headers["Retry-After"]
    assert health.status_code == 200


async def test_rate_limit_can_be_switched_off(client: httpx.AsyncClient) -> None:
    """With RATE_LIMIT_ENABLED=false (the test settings) bursts are never limited."""
    codes = {(await client.get("/health/live")).status_code for _ in range(30)}
    codes |= {(await client.get("/v1/payments?limit=1")).status_code for _ in range(30)}
    assert 429 not in codes


def _sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


async def test_business_metrics_count_charges_refunds_and_replays(
    money_client: httpx.AsyncClient, new_trip_id: Callable[[], int]
) -> None:
    """A charge, a replay and a refund move payments_total, replays, refunds and trip calls."""
    before = (await money_client.get("/metrics")).text
    trip_id = new_trip_id()
    payload = {"idempotency_key": f"metrics-{trip_id}", "trip_id": trip_id, "method": "UPI"}
    charged = (await money_client.post("/v1/payments/charge", json=payload)).json()
    await money_client.post("/v1/payments/charge", json=payload)
    await money_client.post(
        f"/v1/payments/{charged['payment_id']}/refund",
        json={"idempotency_key": f"metrics-r-{trip_id}", "amount": 1},
    )
    after = (await money_client.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert delta("payments_total", method="UPI", status="SUCCESS") == 1
    assert delta("payment_amount_count") == 1
    assert delta("idempotent_replays_total", operation="charge") == 1
    assert delta("refunds_total") == 1
    assert delta("trip_service_requests_total", outcome="found") == 1
    assert delta("trip_service_request_duration_seconds_count") == 1


def test_env_example_documents_every_setting() -> None:
    """.env.example names every setting, and nothing that is not one."""
    names = {field.upper() for field in Settings.model_fields}
    documented = set()
    for line in Path(ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            documented.add(match.group(1))
    assert documented == names


def test_env_example_holds_no_password() -> None:
    """The example file leaves DB_PASS empty and carries no credentials in URLs."""
    text = Path(ROOT / ".env.example").read_text()
    assert re.search(r"^DB_PASS=$", text, re.MULTILINE)
    assert not re.search(r"postgres(ql)?://[^:@/\s]+:(?!<password>)[^@\s]+@", text)
