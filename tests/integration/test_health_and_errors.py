"""Health (up, down, hanging DB), problem+json for every error, request ids, metrics, docs."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from payment_service import SERVICE_NAME, __version__
from payment_service.app import create_app
from payment_service.db import RawReads
from payment_service.services.health import SharedProbe, expected_revision
from payment_service.settings import Settings
from tests.conftest import make_settings

PROBLEM_JSON = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail"}
UNREACHABLE_DB = "postgresql+asyncpg://postgres@127.0.0.1:1/nope"
BUSINESS_METRICS = (
    "payments_total",
    "payment_amount",
    "refunds_total",
    "idempotent_replays_total",
    "trip_service_requests_total",
    "outbox_pending",
    "outbox_delivery_failures_total",
)


@asynccontextmanager
async def serving(
    settings: Settings, app: FastAPI | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan and yield a client over it (unexpected errors become responses)."""
    application = app or create_app(settings, run_dispatcher=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with this status."""
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert set(problem) >= PROBLEM_KEYS
    assert problem["status"] == status
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


# --- /health, /health/live, /health/ready ---


async def test_health_up_has_the_seed_shape(client: httpx.AsyncClient) -> None:
    """GET /health answers 200 with service, version, status, database_status, timestamp."""
    response = await client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"service", "version", "status", "database_status", "timestamp"}
    assert (body["service"], body["version"]) == (SERVICE_NAME, __version__)
    assert (body["status"], body["database_status"]) == ("UP", "UP")
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)


async def test_health_with_unreachable_database_is_503_down_within_2s() -> None:
    """With the DB refusing connections, /health is 503 with DOWN, answered within 2 s."""
    async with serving(make_settings(UNREACHABLE_DB)) as http:
        started = time.monotonic()
        response = await http.get("/health")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database_status"]) == ("DOWN", "DOWN")
    assert (body["service"], body["version"]) == (SERVICE_NAME, __version__)
    assert elapsed < 2.0


@pytest.fixture
async def hanging_database() -> AsyncIterator[str]:
    """A loopback TCP server that accepts connections and never answers; yields its DB URL."""
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/hangs"
    finally:
        release.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_health_with_hanging_database_is_503_within_the_deadline(
    hanging_database: str,
) -> None:
    """With a DB that accepts but never answers, /health is still 503 DOWN in about 2 s."""
    async with serving(make_settings(hanging_database)) as http:
        started = time.monotonic()
        response = await http.get("/health")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["database_status"] == "DOWN"
    assert elapsed < 2.5


class CountingReads(RawReads):
    """RawReads that counts its statements and holds each for `hold` seconds."""

    def __init__(self, engine: AsyncEngine, hold: float) -> None:
        super().__init__(engine)
        self.statements = 0
        self.hold = hold

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.statements += 1
        await asyncio.sleep(self.hold)
        return await super().fetchval(sql, *args)


async def test_concurrent_health_probes_share_one_query(database_url: str) -> None:
    """20 probes at once: one statement, every probe answered; a caller that gives up
    does not cancel the others' query; the next round sends a query of its own."""
    engine = create_async_engine(database_url, pool_size=2)
    try:
        reads = CountingReads(engine, hold=0.2)
        shared = SharedProbe(reads)
        impatient = asyncio.ensure_future(shared())
        others = [asyncio.ensure_future(shared()) for _ in range(19)]
        await asyncio.sleep(0.05)
        impatient.cancel()
        states = await asyncio.gather(*others)
        assert reads.statements == 1
        assert all(state.up and state.revision == expected_revision() for state in states)
        assert impatient.cancelled()

        assert (await shared()).up
        assert reads.statements == 2  # nothing is cached between rounds
    finally:
        await engine.dispose()


async def test_live_is_200_even_when_the_database_is_down() -> None:
    """GET /health/live answers 200 UP without touching the database."""
    async with serving(make_settings(UNREACHABLE_DB)) as http:
        response = await http.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "UP"}


async def test_ready_is_200_with_the_schema_at_head(client: httpx.AsyncClient) -> None:
    """GET /health/ready is 200 when the DB answers and its revision is the Alembic head."""
    response = await client.get("/health/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "UP"
    assert body["database_status"] == "UP"
    assert body["schema_revision"] == body["expected_revision"] == expected_revision()
    assert body["schema_revision"] is not None
    assert body["reason"] is None


@pytest.fixture
async def unmigrated_url(server_url: URL) -> AsyncIterator[str]:
    """An empty database with no schema, dropped afterwards."""
    name = f"payment_bare_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield server_url.set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def test_ready_is_503_on_an_unmigrated_database(unmigrated_url: str) -> None:
    """A reachable database without the schema is not ready: 503, database UP, no revision,
    and a reason that says so."""
    async with serving(make_settings(unmigrated_url)) as http:
        response = await http.get("/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database_status"]) == ("DOWN", "UP")
    assert body["schema_revision"] is None
    assert body["reason"] == f"schema not migrated, head is {expected_revision()}"


async def test_ready_is_503_on_a_database_at_another_revision(unmigrated_url: str) -> None:
    """A database whose alembic_version is not the head is not ready, and says which."""
    engine = create_async_engine(unmigrated_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE alembic_version (version_num text)"))
            await connection.execute(text("INSERT INTO alembic_version VALUES ('older')"))
    finally:
        await engine.dispose()

    async with serving(make_settings(unmigrated_url)) as http:
        response = await http.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["schema_revision"] == "older"
    assert response.json()["reason"] == f"schema at older, head is {expected_revision()}"


async def test_ready_is_503_when_the_database_is_unreachable() -> None:
    """With the DB refusing connections, /health/ready is 503 with database DOWN and the
    reason "database unreachable" (no host, port or driver message)."""
    async with serving(make_settings(UNREACHABLE_DB)) as http:
        response = await http.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["database_status"] == "DOWN"
    assert response.json()["reason"] == "database unreachable"


# --- problem details ---


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    """An unknown path is a 404 problem+json naming the path."""
    response = await client.get("/v1/nothing-here")

    problem = assert_problem(response, 404)
    assert "/v1/nothing-here" in problem["detail"]


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    """A known path with an unsupported method is a 405 problem+json."""
    response = await client.delete("/v1/payments/1")

    assert_problem(response, 405)


async def test_malformed_json_body_is_a_400_problem(client: httpx.AsyncClient) -> None:
    """A body that is not JSON is a 400 problem+json, not a 422 or a 500."""
    response = await client.post(
        "/v1/payments/charge",
        content=b'{"trip_id": 1, "method": ',
        headers={"content-type": "application/json", "Idempotency-Key": "malformed-1"},
    )

    assert_problem(response, 400)


async def test_malformed_json_body_is_rendered_as_malformed_json(
    client: httpx.AsyncClient,
) -> None:
    """The 400 for a malformed body has the malformed-json type and title."""
    response = await client.post(
        "/v1/payments/charge",
        content=b'{"trip_id": 1, "method": ',
        headers={"content-type": "application/json", "Idempotency-Key": "malformed-2"},
    )

    problem = assert_problem(response, 400)
    assert problem["type"].endswith("/malformed-json")
    assert problem["title"] == "Malformed JSON"


async def test_validation_error_is_a_422_problem_with_field_errors(
    client: httpx.AsyncClient,
) -> None:
    """A body failing validation is a 422 problem with one `errors` entry per bad field."""
    response = await client.post(
        "/v1/payments/charge",
        json={"idempotency_key": "v-1", "trip_id": 0, "method": "BITCOIN"},
    )

    problem = assert_problem(response, 422)
    errors = problem["errors"]
    assert {error["field"] for error in errors} == {"trip_id", "method"}
    for error in errors:
        assert set(error) >= {"field", "location", "message", "type"}
        assert error["location"] == "body"


@pytest.fixture
async def exploding_app(settings: Settings) -> FastAPI:
    """The real app plus a throwaway route that fails with an unexpected exception."""
    application = create_app(settings, run_dispatcher=False)

    @application.get("/test-only/explode", include_in_schema=False)
    async def explode() -> None:
        raise RuntimeError("SELECT card_number FROM secrets -- internal detail")

    @application.get("/test-only/busy-connection", include_in_schema=False)
    async def busy_connection() -> None:
        # What a pooled connection PostgreSQL's exit left mid-protocol raises (a raw
        # asyncpg error that derives from Exception alone): a CI run answered it 500.
        import asyncpg

        raise asyncpg.InternalClientError("another operation is in progress")

    @application.get("/test-only/wrapped-outage", include_in_schema=False)
    async def wrapped_outage() -> None:
        import asyncpg

        try:
            raise asyncpg.ConnectionDoesNotExistError("closed in the middle of operation")
        except asyncpg.PostgresError as error:
            raise RuntimeError("while recording") from error

    return application


async def test_unexpected_exception_is_a_500_problem_without_internals(
    settings: Settings, exploding_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is a generic 500 problem (no trace, SQL or message); it is logged."""
    async with serving(settings, exploding_app) as http:
        response = await http.get("/test-only/explode")

    problem = assert_problem(response, 500)
    assert set(problem) <= PROBLEM_KEYS | {"instance"}
    for leak in ("Traceback", "RuntimeError", "SELECT", "secrets", 'File "'):
        assert leak not in response.text
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert logged, "the exception is logged server-side, with its traceback"


@pytest.mark.parametrize("path", ["/test-only/busy-connection", "/test-only/wrapped-outage"])
async def test_a_database_outage_however_raised_is_a_503_never_a_500(
    settings: Settings, exploding_app: FastAPI, path: str
) -> None:
    """A raw asyncpg error outside PostgresError/InterfaceError, or an outage wrapped in
    another exception, is the outage's 503 with Retry-After, not the last resort's 500."""
    async with serving(settings, exploding_app) as http:
        response = await http.get(path, headers={"X-Request-ID": "outage-1"})

    problem = assert_problem(response, 503)
    assert response.headers["retry-after"]
    assert response.headers.get("x-request-id") == "outage-1"
    assert "in progress" not in response.text and "closed" not in problem.get("detail", "")


async def test_unexpected_exception_still_returns_the_request_id(
    settings: Settings, exploding_app: FastAPI
) -> None:
    """A 500 carries the request's X-Request-ID like every other response."""
    async with serving(settings, exploding_app) as http:
        response = await http.get("/test-only/explode", headers={"X-Request-ID": "boom-1"})

    assert response.status_code == 500
    assert response.headers.get("x-request-id") == "boom-1"


# --- request ids ---


async def test_request_id_is_echoed_when_given(client: httpx.AsyncClient) -> None:
    """An incoming X-Request-ID comes back unchanged."""
    response = await client.get("/health/live", headers={"X-Request-ID": "trace-abc.123:x"})

    assert response.headers["x-request-id"] == "trace-abc.123:x"


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    """Without X-Request-ID, each response gets a fresh generated id."""
    first = await client.get("/health/live")
    second = await client.get("/health/live")

    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize("incoming", ["has spaces in it", "x" * 200, "<script>"])
async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    """An X-Request-ID that is too long or has odd characters is replaced by a generated one."""
    response = await client.get("/health/live", headers={"X-Request-ID": incoming})

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_request_id_is_returned_on_problem_responses(client: httpx.AsyncClient) -> None:
    """Error responses (here a 404 problem) carry the request id too."""
    response = await client.get("/v1/payments/999999", headers={"X-Request-ID": "err-42"})

    assert response.status_code == 404
    assert response.headers["x-request-id"] == "err-42"


# --- /metrics ---


async def test_metrics_expose_http_and_business_metrics(client: httpx.AsyncClient) -> None:
    """/metrics is Prometheus text with http_requests_total and every business metric."""
    await client.get("/health/live")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, flags=re.MULTILINE))
    assert types.get("http_requests_total") == "counter"
    for name in BUSINESS_METRICS:
        base = name.removesuffix("_total")
        assert name in types or base in types, f"{name} missing from /metrics"
    assert types["payment_amount"] == "histogram"
    assert types["outbox_pending"] == "gauge"


async def _http_metric_lines(settings: Settings, paths: list[str]) -> list[str]:
    """The http_requests_total lines of a new app's /metrics after requesting `paths`."""
    async with serving(settings) as http:
        for path in paths:
            await http.get(path)
        body = (await http.get("/metrics")).text
    return [line for line in body.splitlines() if line.startswith("http_requests_total{")]


async def test_metrics_label_routes_by_template_not_raw_ids(
    seeded: AsyncEngine, settings: Settings
) -> None:
    """Requests to /v1/payments/1, /2 and a missing id count under /v1/payments/{payment_id}."""
    lines = await _http_metric_lines(
        settings, ["/v1/payments/1", "/v1/payments/2", "/v1/payments/987654"]
    )

    handlers = {match for line in lines for match in re.findall(r'handler="([^"]*)"', line)}
    assert "/v1/payments/{payment_id}" in handlers
    assert not any(re.search(r"/v1/payments/\d", handler) for handler in handlers)


async def test_every_app_instance_records_http_metrics(settings: Settings) -> None:
    """A second app built in the same process still counts its own requests."""
    await _http_metric_lines(settings, ["/health/live"])

    lines = await _http_metric_lines(settings, ["/v1/payments/999999"])

    assert any('handler="/v1/payments/{payment_id}"' in line for line in lines)


async def test_metrics_payments_series_exist_before_any_charge(client: httpx.AsyncClient) -> None:
    """payments_total has its method/status series at start, so dashboards see zeros."""
    text_ = (await client.get("/metrics")).text

    assert re.search(r'^payments_total\{method="CASH",status="SUCCESS"\} ', text_, re.MULTILINE)
    assert re.search(r'^trip_service_requests_total\{outcome="unavailable"\} ', text_, re.M)


# --- docs ---


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html, flags=re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_reference_only_local_assets(client: httpx.AsyncClient, page: str) -> None:
    """/docs and /redoc load scripts, styles and icons only from this service, each served 200."""
    response = await client.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assets = _asset_urls(response.text)
    assert any(url.endswith(".js") for url in assets)
    for url in assets:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} references external {url}"
    for external in ("cdn.jsdelivr.net", "unpkg.com", "fonts.googleapis.com", "https://"):
        assert external not in response.text
    for url in assets:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url


async def test_docs_spec_url_is_local(client: httpx.AsyncClient) -> None:
    """Swagger UI loads the OpenAPI document from this service's /openapi.json."""
    html = (await client.get("/docs")).text

    assert "'/openapi.json'" in html or '"/openapi.json"' in html


# --- /openapi.json ---

SPEC_OPERATIONS = {
    ("get", "/health"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/v1/payments"),
    ("get", "/v1/payments/{payment_id}"),
    ("post", "/v1/payments/charge"),
    ("post", "/v1/payments/{payment_id}/refund"),
    ("get", "/v1/payments/{payment_id}/refunds"),
    ("get", "/v1/payments/{payment_id}/receipt"),
}


async def _operations(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, Any]]:
    document = (await client.get("/openapi.json")).json()
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


async def test_openapi_lists_every_endpoint(client: httpx.AsyncClient) -> None:
    """/openapi.json documents every endpoint of the SPEC."""
    operations = await _operations(client)

    assert set(operations) >= SPEC_OPERATIONS


async def test_openapi_documents_error_responses_of_every_endpoint(
    client: httpx.AsyncClient,
) -> None:
    """Each operation lists at least one 4xx/5xx response."""
    operations = await _operations(client)

    undocumented = sorted(
        f"{method.upper()} {path}"
        for (method, path), operation in operations.items()
        if not any(code[0] in "45" for code in operation["responses"])
    )
    assert undocumented == []


async def test_openapi_error_responses_are_problem_documents(client: httpx.AsyncClient) -> None:
    """Every documented 4xx (and 500) is application/problem+json, never FastAPI's default."""
    operations = await _operations(client)

    wrong = sorted(
        f"{method.upper()} {path} {code}"
        for (method, path), operation in operations.items()
        for code, response in operation["responses"].items()
        if (code[0] == "4" or code == "500") and PROBLEM_JSON not in response.get("content", {})
    )
    assert wrong == []


async def test_the_running_app_keeps_its_startup_objects_out_of_full_collections(
    settings: Settings,
) -> None:
    """While serving, what the lifespan built is frozen (a full collection does not walk
    it); at exit it is unfrozen, so a process that builds several apps frees each one."""
    import gc

    before = gc.get_freeze_count()
    application = create_app(settings, run_dispatcher=False)
    async with application.router.lifespan_context(application):
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
