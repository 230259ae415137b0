"""The edge, in process: 413/431/408 before the app pays, HEAD, Allow, response headers,
hostile strings and numbers as 422s, and database outages as 503s (issue 9, items 4-7).

The same attacks against a real `payment-service serve` (memory bounds, the uvicorn
protocol, a database restart) are in tests/e2e/test_edge_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message, Receive, Scope, Send

from payment_service.app import create_app
from payment_service.edge import RequestLimitsMiddleware
from payment_service.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_health_and_errors import (  # noqa: F401 (a fixture)
    UNREACHABLE_DB,
    assert_problem,
    hanging_database,
    serving,
)

PROBLEM_BASE = "/problems/"


@pytest.fixture
async def edge_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client over an app with small limits (8 KiB bodies, 4 KiB headers)."""
    limited = settings.model_copy(update={"max_body_bytes": 8192, "max_header_bytes": 4096})
    async with serving(limited) as http:
        yield http


# -- 413 / 431 / 408 ------------------------------------------------------------


async def test_body_over_the_limit_by_content_length_is_413(
    edge_client: httpx.AsyncClient,
) -> None:
    """A declared Content-Length over MAX_BODY_BYTES is refused before anything is read."""
    body = json.dumps({"trip_id": 1, "method": "CARD", "pad": "x" * 10_000})
    response = await edge_client.post(
        "/v1/payments/charge", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 413)
    assert problem["type"] == PROBLEM_BASE + "content-too-large"
    assert "8192" in problem["detail"]
    # Kept open: the server drops the rest of the body, so a client still sending it
    # reads this answer instead of a reset.
    assert "connection" not in response.headers


async def test_streamed_body_over_the_limit_is_413(edge_client: httpx.AsyncClient) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and cut off at the limit."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"trip_id": 1, "method": "CARD", "pad": "'
        for _ in range(1000):  # 1 MB if it were all read
            sent += 1
            yield b"x" * 1024
        yield b'"}'

    response = await edge_client.post(
        "/v1/payments/charge", content=chunks(), headers={"content-type": "application/json"}
    )
    assert assert_problem(response, 413)["type"] == PROBLEM_BASE + "content-too-large"


async def test_body_under_the_limit_is_served(edge_client: httpx.AsyncClient) -> None:
    """Bodies within the limit reach validation as before (here: a 422 for a bad method)."""
    response = await edge_client.post(
        "/v1/payments/charge", json={"idempotency_key": "k", "trip_id": 1, "method": "GOLD"}
    )
    assert_problem(response, 422)


async def test_headers_over_the_limit_are_431(edge_client: httpx.AsyncClient) -> None:
    """Header fields over MAX_HEADER_BYTES in total are a 431 problem."""
    headers = {f"x-filler-{i}": "y" * 500 for i in range(10)}
    response = await edge_client.get("/v1/payments", headers=headers)
    problem = assert_problem(response, 431)
    assert problem["type"] == PROBLEM_BASE + "request-header-fields-too-large"


async def test_a_long_query_string_counts_towards_the_header_limit(
    edge_client: httpx.AsyncClient,
) -> None:
    response = await edge_client.get("/v1/payments?trip_id=1&x=" + "a" * 5000)
    assert_problem(response, 431)


async def _call(app: Any, scope: Scope, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_body_that_stops_arriving_is_408() -> None:
    """A body still incomplete after REQUEST_READ_TIMEOUT_SECONDS: 408, the app is told the
    client left, and whatever the app answers after that is dropped."""
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    first = True

    async def stalling_receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    middleware = RequestLimitsMiddleware(
        app, max_body_bytes=1024, max_header_bytes=1024, read_timeout_seconds=0.2
    )
    # A streamed body, as uvicorn delivers one: its framing header says a body follows.
    headers = [(b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": "/v1/payments/charge", "headers": headers}
    sent = await asyncio.wait_for(_call(middleware, scope, stalling_receive), 5)

    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["type"] == PROBLEM_BASE + "request-timeout"
    assert len(sent) == 2  # the app's late 400 never went out
    assert seen[-1] == {"type": "http.disconnect"}


async def test_the_read_timeout_does_not_apply_once_the_body_is_in() -> None:
    """A slow handler is not a slow client: after the last chunk no deadline applies."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.4)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    middleware = RequestLimitsMiddleware(
        app, max_body_bytes=1024, max_header_bytes=1024, read_timeout_seconds=0.1
    )
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-length", b"2")]}
    sent = await _call(middleware, scope, receive)
    assert sent[0]["status"] == 200


async def test_a_request_without_a_body_passes_straight_through() -> None:
    """No Content-Length and no Transfer-Encoding: no body follows, so the app gets the
    server's own receive and send (nothing to bound or time out)."""
    calls: list[tuple[object, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((receive, send))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    middleware = RequestLimitsMiddleware(
        app, max_body_bytes=1024, max_header_bytes=1024, read_timeout_seconds=0.1
    )
    await middleware({"type": "http", "method": "GET", "path": "/x", "headers": []}, receive, send)
    framed = [(b"content-length", b"5")]
    await middleware(
        {"type": "http", "method": "POST", "path": "/x", "headers": framed}, receive, send
    )
    assert calls[0] == (receive, send)
    assert calls[1] != (receive, send)  # a body follows: bounded and timed


# -- HEAD, Allow, response headers ---------------------------------------------------


async def test_head_answers_on_every_get_route(
    client: httpx.AsyncClient, seeded: AsyncEngine
) -> None:
    """HEAD is 200 with GET's headers and no body on every GET route, docs and metrics too."""
    spec = (await client.get("/openapi.json")).json()
    paths = [path for path, item in spec["paths"].items() if "get" in item]
    paths += ["/metrics", "/docs", "/redoc", "/openapi.json"]
    listed = (await client.get("/v1/payments?limit=1")).json()["payments"][0]["payment_id"]
    for template in paths:
        path = template.replace("{payment_id}", str(listed)).replace("{slug}", "not-found")
        path = path.replace("{trip_id}", "1").replace("{driver_id}", "1")
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    # The OpenAPI document lists each route once, as GET.
    assert all("head" not in item for item in spec["paths"].values())


async def test_405_allow_lists_the_real_methods(client: httpx.AsyncClient) -> None:
    """Allow names every method the path answers, HEAD with GET."""
    cases = {
        ("POST", "/v1/payments"): "GET, HEAD",
        ("DELETE", "/health"): "GET, HEAD",
        ("GET", "/v1/payments/1/refund"): "POST",
        ("PUT", "/v1/payments/1/refunds"): "GET, HEAD",
    }
    for (method, path), allow in cases.items():
        response = await client.request(method, path)
        assert_problem(response, 405)
        assert response.headers["allow"] == allow, (method, path)


async def test_api_responses_are_not_cached_nor_sniffed(client: httpx.AsyncClient) -> None:
    """Cache-Control: no-store and nosniff on answers and problems; static assets may cache."""
    for path in ("/v1/payments?limit=1", "/health", "/nope", "/openapi.json", "/v1/payments/0"):
        response = await client.get(path)
        assert response.headers["cache-control"] == "no-store", path
        assert response.headers["x-content-type-options"] == "nosniff", path
    asset = await client.get("/static/docs/swagger-ui.css")
    assert asset.status_code == 200
    assert "no-store" not in asset.headers.get("cache-control", "")
    assert asset.headers["x-content-type-options"] == "nosniff"


# -- hostile strings and numbers -------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [1e30, "1e30", 1e27, "1E+27", "1000000000000", "NaN", "Infinity", "-Infinity", "1e999999"],
)
async def test_huge_or_non_finite_refund_amounts_are_422(
    client: httpx.AsyncClient, amount: object
) -> None:
    """Amounts with more than 12 integer digits or not finite: a 422, never InvalidOperation."""
    response = await client.post(
        "/v1/payments/1/refund", json={"idempotency_key": "huge", "amount": amount}
    )
    problem = assert_problem(response, 422)
    assert problem["type"] == PROBLEM_BASE + "validation-error"
    assert problem["errors"][0]["field"] == "amount"


async def test_extreme_amounts_as_raw_json_numbers_are_never_5xx(
    client: httpx.AsyncClient,
) -> None:
    """Exponents and digit runs the JSON parser turns into huge or tiny Decimals/ints."""
    for raw, expected in (("1e30", 422), ("1" + "0" * 40, 422), ("-1e30", 422)):
        response = await client.post(
            "/v1/payments/1/refund",
            content='{"idempotency_key": "raw", "amount": ' + raw + "}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == expected, (raw, response.text)
    for raw in ("1e-999999999", "0." + "0" * 5000 + "1", "9" * 5000):
        response = await client.post(
            "/v1/payments/1/refund",
            content='{"idempotency_key": "raw", "amount": ' + raw + "}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code < 500, (raw, response.text)


HOSTILE = ["nul\x00byte", "lone\ud800surrogate"]


@pytest.mark.parametrize("text", HOSTILE)
async def test_nul_and_surrogates_in_charge_fields_are_422(
    client: httpx.AsyncClient, text: str
) -> None:
    """In the idempotency key, a metadata key or a metadata value."""
    bodies = [
        {"idempotency_key": text, "trip_id": 1, "method": "CARD"},
        {"idempotency_key": "k", "trip_id": 1, "method": "CARD", "metadata": {text: "v"}},
        {"idempotency_key": "k", "trip_id": 1, "method": "CARD", "metadata": {"k": text}},
    ]
    for body in bodies:
        raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a \\ud800 escape
        response = await client.post(
            "/v1/payments/charge", content=raw, headers={"content-type": "application/json"}
        )
        assert_problem(response, 422)


@pytest.mark.parametrize("text", HOSTILE)
async def test_nul_and_surrogates_in_refund_fields_are_422(
    client: httpx.AsyncClient, text: str
) -> None:
    for body in ({"idempotency_key": text}, {"idempotency_key": "k", "reason": text}):
        response = await client.post(
            "/v1/payments/1/refund",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert_problem(response, 422)


async def test_nul_in_the_idempotency_key_header_is_422(client: httpx.AsyncClient) -> None:
    """The header goes through the same check as the body's key (a 422 naming the header)."""
    for path, body in (
        ("/v1/payments/charge", b'{"trip_id": 1, "method": "CARD"}'),
        ("/v1/payments/1/refund", b"{}"),
    ):
        headers = httpx.Headers(
            [(b"content-type", b"application/json"), (b"idempotency-key", b"a\x00b")]
        )
        response = await client.post(path, content=body, headers=headers)
        assert assert_problem(response, 422)["errors"][0]["location"] == "header"


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(21)},
        {"k" * 41: "v"},
        {"k": "v" * 501},
    ],
)
async def test_metadata_over_stripes_limits_is_422(
    client: httpx.AsyncClient, metadata: dict[str, str]
) -> None:
    body = {"idempotency_key": "meta", "trip_id": 1, "method": "CARD", "metadata": metadata}
    assert_problem(await client.post("/v1/payments/charge", json=body), 422)


async def test_metadata_limits_are_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    metadata = schema["ChargeRequest"]["properties"]["metadata"]
    text = json.dumps(metadata)
    assert "20 keys" in metadata["description"]
    assert '"maxProperties": 20' in text and '"maxLength": 40' in text
    assert '"maxLength": 500' in text


# -- database outages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/payments", None),
        ("GET", "/v1/payments/1", None),
        ("GET", "/v1/payments/1/receipt", None),
        ("GET", "/v1/payments/1/refunds", None),
        ("POST", "/v1/payments/1/refund", {"idempotency_key": "down"}),
        ("POST", "/v1/payments/charge", {"idempotency_key": "down", "trip_id": 1, "method": "UPI"}),
    ],
)
async def test_unreachable_database_is_503_with_retry_after(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Connection refused on any route: 503 problem+json with Retry-After, never a 500."""
    async with serving(make_settings(UNREACHABLE_DB)) as http:
        response = await http.request(method, path, json=body)
    problem = assert_problem(response, 503)
    assert problem["type"] == PROBLEM_BASE + "database-unavailable"
    assert int(response.headers["retry-after"]) > 0


async def test_hanging_database_is_503_after_the_connect_timeout(
    hanging_database: str,  # noqa: F811
) -> None:
    """A database that accepts and never answers: the connect timeout becomes a 503."""
    settings = make_settings(hanging_database, db_connect_timeout_seconds=0.3)
    async with serving(settings) as http:
        response = await http.get("/v1/payments")
    assert assert_problem(response, 503)["type"] == PROBLEM_BASE + "database-unavailable"


async def test_pool_exhaustion_is_503(settings: Settings) -> None:
    """Waiting longer than DB_POOL_TIMEOUT_SECONDS for a connection is an outage too."""
    tight = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 0.2}
    )
    app = create_app(tight, run_dispatcher=False)
    async with serving(tight, app) as http:
        async with app.state.engine.connect():  # hold the only connection
            response = await http.get("/v1/payments?limit=1")
        after = await http.get("/v1/payments?limit=1")
    assert assert_problem(response, 503)["type"] == PROBLEM_BASE + "database-unavailable"
    assert after.status_code == 200
