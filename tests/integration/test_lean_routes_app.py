"""The service's lean routes (api/routing.LeanRoute) answer byte for byte as FastAPI's own
handler does: authentication, rate limits, validation, not-found and HEAD included."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from payment_sandbox.runner import Sandbox
from payment_service.api.routing import LeanRoute
from payment_service.app import create_app
from payment_service.services.api_keys import create_key
from tests.conftest import insert_payment
from tests.integration.conftest import money_settings

VARYING = {"x-request-id", "date"}
TIMESTAMP = re.compile(rb'"timestamp":"[^"]*"')


async def _key(engine: AsyncEngine, *scopes: str, per_minute: int | None = None) -> str:
    async with AsyncSession(engine) as session, session.begin():
        created = await create_key(
            session, f"lean-{uuid.uuid4().hex[:8]}", scopes, rate_limit_per_minute=per_minute
        )
    assert created.key is not None
    return created.key


async def _answers(
    database_url: str, peers: Sandbox, requests: list[tuple[str, str, dict[str, str]]], lean: bool
) -> list[tuple[int, bytes, list[tuple[str, str]]]]:
    settings = money_settings(database_url, peers, auth_required=True, rate_limit_enabled=True)
    app = create_app(settings, run_dispatcher=False, run_reconciler=False)
    lean_routes = [r for r in app.routes if isinstance(r, LeanRoute) and r.lean_plan is not None]
    assert {r.path for r in lean_routes} >= {"/v1/payments", "/v1/payments/{payment_id}", "/health"}
    if not lean:
        for route in lean_routes:
            route.app = route.stock_app
    out: list[tuple[int, bytes, list[tuple[str, str]]]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for method, path, headers in requests:
                response = await client.request(method, path, headers=headers)
                kept = [(k, v) for k, v in response.headers.items() if k not in VARYING]
                body = TIMESTAMP.sub(b'"timestamp":"(now)"', response.content)
                out.append((response.status_code, body, kept))
    return out


async def test_lean_routes_answer_as_fastapis_own_handler(
    database_url: str, engine: AsyncEngine, peers: Sandbox
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        payment_id = await insert_payment(session)
    reader = {"Authorization": f"Bearer {await _key(engine, 'read')}"}
    charger = {"Authorization": f"Bearer {await _key(engine, 'charge')}"}
    other = {"Authorization": f"Bearer {await _key(engine, 'read', per_minute=3)}"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/payments/{payment_id}", reader),
        ("HEAD", f"/v1/payments/{payment_id}", reader),
        ("GET", "/v1/payments/0", reader),
        ("GET", "/v1/payments/abc", reader),
        ("GET", "/v1/payments/99999999999999999999", reader),
        ("GET", "/v1/payments/9000000000000", reader),  # no such payment: 404
        ("GET", f"/v1/payments/{payment_id}", {}),  # no key: 401
        ("GET", f"/v1/payments/{payment_id}", {"Authorization": "Bearer psk_nope_x"}),
        ("GET", f"/v1/payments/{payment_id}", {"Authorization": "Basic abc"}),
        ("GET", f"/v1/payments/{payment_id}", charger),  # lacks read: 403
        ("GET", "/v1/payments?status=SUCCESS&limit=2", other),
        ("GET", "/v1/payments?status=BOGUS&limit=0&x=1", other),
        ("GET", f"/v1/payments?trip_id=-1&offset={2**70}", other),
        ("GET", "/v1/payments?limit=3", other),  # its 4th read: 429
        ("GET", "/health", {}),
        ("HEAD", "/health/live", {}),
        ("GET", "/health/ready", {}),
    ]
    lean = await _answers(database_url, peers, requests, lean=True)
    stock = await _answers(database_url, peers, requests, lean=False)
    for request, mine, theirs in zip(requests, lean, stock, strict=True):
        assert mine == theirs, request
    statuses = [status for status, _, _ in lean]
    expected = [200, 200, 422, 422, 422, 404, 401, 401, 401, 403]
    expected += [200, 422, 422, 429, 200, 200, 200]
    assert statuses == expected
