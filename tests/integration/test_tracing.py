"""OpenTelemetry: one charge is one trace, from the server span to the notification's delivery.

The app is given a provider with the SDK's in-memory exporter (production builds an
OTLP/HTTP one from OTEL_EXPORTER_OTLP_ENDPOINT); the Trip service, the processor and
the Notification sink are the real sandbox servers on loopback.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine

from payment_sandbox.runner import Sandbox
from payment_service import tracing
from payment_service.app import create_app
from payment_service.observability import configure_logging
from payment_service.settings import Settings
from payment_service.worker.dispatcher import OutboxDispatcher
from tests.conftest import make_settings
from tests.integration.conftest import money_settings

CHARGE = "/v1/payments/charge"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider keeping finished spans in memory; httpx instrumentation undone after."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    tracing.disable()
    provider.shutdown()


async def charge_and_deliver(
    settings: Settings, provider: TracerProvider, trip_id: int
) -> tuple[httpx.Response, int]:
    """One charge through the traced app, then one dispatcher batch; (answer, delivered)."""
    app = create_app(settings, run_dispatcher=False, tracer_provider=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post(
                CHARGE, json={"trip_id": trip_id, "method": "CARD", "idempotency_key": "traced"}
            )
        dispatcher = OutboxDispatcher(settings, app.state.session_factory, tracer_provider=provider)
        delivered = await dispatcher.run_once()
    return response, delivered


def by_trace(spans: tuple[ReadableSpan, ...], trace_id: int) -> list[ReadableSpan]:
    return [span for span in spans if span.context.trace_id == trace_id]


def url_of(span: ReadableSpan) -> str:
    attributes: dict[str, Any] = dict(span.attributes or {})
    return str(attributes.get("url.full") or attributes.get("http.url") or "")


async def test_a_charge_and_its_notification_are_one_trace(
    database_url: str,
    peers: Sandbox,
    empty_db: AsyncEngine,
    new_trip_id: Callable[[], int],
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Server span, SQL spans, the Trip call and (after one batch) the delivery share a trace id,
    and the Notification sink received a `traceparent` of that trace."""
    provider, memory = exporter
    response, delivered = await charge_and_deliver(
        money_settings(database_url, peers), provider, new_trip_id()
    )

    assert response.status_code == 201, response.text
    assert delivered == 1
    spans = memory.get_finished_spans()
    [server] = [span for span in spans if span.kind is SpanKind.SERVER and CHARGE in span.name]
    trace_id = server.context.trace_id
    in_trace = by_trace(spans, trace_id)
    sql = [
        span for span in in_trace if dict(span.attributes or {}).get("db.system") == "postgresql"
    ]
    trip_calls = [
        span
        for span in in_trace
        if span.kind is SpanKind.CLIENT and url_of(span).startswith(peers.trip_url)
    ]
    [delivery] = [span for span in spans if span.name == "outbox deliver"]
    notification_calls = [
        span
        for span in in_trace
        if span.kind is SpanKind.CLIENT and url_of(span).startswith(peers.notification_url)
    ]

    assert len(sql) >= 3  # the charge's transactions, in the request's trace
    assert trip_calls, [span.name for span in in_trace]
    assert delivery.context.trace_id == trace_id
    assert delivery.parent is not None and delivery.parent.trace_id == trace_id
    assert [span.parent.span_id for span in notification_calls if span.parent] == [
        delivery.context.span_id
    ]
    [received] = peers.notifications.notifications
    traceparent = received["headers"]["traceparent"]
    assert traceparent is not None
    assert traceparent.split("-")[1] == format(trace_id, "032x")
    assert received["body"]["payment_id"] == response.json()["payment_id"]


async def test_the_stripe_sdk_calls_are_traced_too(
    database_url: str,
    peers: Sandbox,
    empty_db: AsyncEngine,
    new_trip_id: Callable[[], int],
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The processor, reached through the SDK over our peer transport, joins the trace too."""
    provider, memory = exporter
    settings = money_settings(
        database_url,
        peers,
        gateway="stripe",
        stripe_api_key="sk_test_tracing",
        stripe_api_base=peers.processor_url,
    )
    response, _ = await charge_and_deliver(settings, provider, new_trip_id())

    assert response.status_code == 201, response.text
    spans = memory.get_finished_spans()
    [server] = [span for span in spans if span.kind is SpanKind.SERVER and CHARGE in span.name]
    processor_calls = [
        span
        for span in by_trace(spans, server.context.trace_id)
        if span.kind is SpanKind.CLIENT and url_of(span).startswith(peers.processor_url)
    ]
    assert processor_calls, [span.name for span in spans]


async def test_log_lines_name_the_active_span(
    exporter: tuple[TracerProvider, InMemorySpanExporter], capsys: pytest.CaptureFixture[str]
) -> None:
    """Inside a span, JSON log lines carry its trace_id and span_id; outside, neither."""
    provider, _ = exporter
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("INFO")
    try:
        logger = logging.getLogger("payment_service.test_tracing")
        with provider.get_tracer("test").start_as_current_span("work") as span:
            logger.info("inside")
        logger.info("outside")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    [inside] = [line for line in lines if line["message"] == "inside"]
    [outside] = [line for line in lines if line["message"] == "outside"]
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside and "span_id" not in outside


def test_tracing_is_off_without_an_endpoint(database_url: str) -> None:
    """No OTEL_EXPORTER_OTLP_ENDPOINT: no provider, no tracing middleware, no httpx patching."""
    settings = make_settings(database_url)
    app = create_app(settings)

    assert tracing.provider_from_settings(settings) is None
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)  # the instrumentor's flag
    assert tracing._provider is None
    assert tracing.current_traceparent() is None


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: keeps every POSTed body, answers 200."""

    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def collector() -> Iterator[str]:
    """The stand-in collector on a free loopback port, in a thread (the exporter blocks)."""
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    tracing.disable()


async def test_otlp_endpoint_exports_the_spans_over_http(
    database_url: str, collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set: the app's spans reach {endpoint}/v1/traces as OTLP
    protobuf, under OTEL_SERVICE_NAME."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    settings = make_settings(
        database_url, otel_exporter_otlp_endpoint=collector, otel_service_name="payments-test"
    )
    app = create_app(settings, run_dispatcher=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/v1/payments/1")).status_code in {200, 404}
    # The lifespan flushed the batch on exit.

    paths = {path for path, _ in _Collector.received}
    assert paths == {"/v1/traces"}
    names, services = set(), set()
    for _, body in _Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                names.update(span.name for span in scope.spans)
    assert services == {"payments-test"}
    assert "GET /v1/payments/{payment_id}" in names
