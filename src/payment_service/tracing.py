"""Distributed tracing with OpenTelemetry: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

When on, `create_app` (and `payment-service worker`) build a `TracerProvider`
exporting over OTLP/HTTP and instrument:

- the FastAPI app (a server span per request, `traceparent` accepted from callers);
- the Trip, Notification and processor (Stripe SDK) calls: each `PeerClient` given the
  provider wraps its transport in OpenTelemetry's httpx transport, which makes the
  client span and forwards `traceparent`; any other httpx client made afterwards is
  instrumented process-wide;
- the SQLAlchemy engine (a span per statement).

Outbox messages store the `traceparent` current when they were enqueued
(`current_traceparent`); the dispatcher starts each delivery span as its child
(`context_from_traceparent`), so the delivery joins the charge's trace.

When off, nothing is installed: `tracer()` is the API's no-op tracer and
`current_traceparent()` finds no span, so a request pays for a context lookup only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

    from payment_service.settings import Settings

log = logging.getLogger(__name__)

TRACER_NAME = "payment_service"
TRACEPARENT_HEADER = "traceparent"
_provider: TracerProvider | None = None
"""The provider httpx clients are instrumented with (None: tracing is off)."""


def provider_from_settings(settings: Settings) -> TracerProvider | None:
    """An OTLP/HTTP-exporting provider when OTEL_EXPORTER_OTLP_ENDPOINT is set, else None."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    # The generic endpoint gets the signal's path appended, as the OTLP spec says.
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing enabled",
        extra={"otlp_endpoint": endpoint, "service_name": settings.otel_service_name},
    )
    return provider


def enable(provider: TracerProvider) -> None:
    """Trace (and propagate through) every httpx client created from now on, in this process."""
    global _provider
    if _provider is provider:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if _provider is not None:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    _provider = provider


def disable() -> None:
    """Stop instrumenting new httpx clients (tests that enabled a provider of their own)."""
    global _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().uninstrument()
    _provider = None


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    """A server span for each request (metrics scrapes and probes excluded)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="/metrics,/health"
    )


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """A client span per SQL statement on this engine (its listeners go with the engine)."""
    from opentelemetry import metrics
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    # EngineTracer is what `SQLAlchemyInstrumentor().instrument(engine=...)` builds, minus the
    # process-wide singleton that would refuse a second engine (tests, `worker`).
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    usage = metrics.get_meter(TRACER_NAME).create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, engine.sync_engine, usage)


def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """Our tracer: from `provider`, else the enabled one, else the API's no-op tracer."""
    chosen = provider or _provider
    if chosen is None:
        return trace.NoOpTracer()
    return chosen.get_tracer(TRACER_NAME)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the active span, or None when nothing is being traced."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT_HEADER)


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The context to start a child span in (None: a new trace)."""
    if not traceparent:
        return None
    carrier: dict[str, Any] = {TRACEPARENT_HEADER: traceparent}
    return propagate.extract(carrier)
