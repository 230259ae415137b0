"""Application factory and lifespan.

The lifespan owns the engine, the session factory, the HTTP clients and the
outbox dispatcher; requests borrow them through `dependencies.py`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from starlette.responses import Response

from payment_service import __version__
from payment_service.api import (
    charges,
    health,
    ledger,
    payments,
    receipts,
    refunds,
    tips,
    webhooks,
)
from payment_service.api.docs import install_docs
from payment_service.auth.guard import Guard, document_scopes
from payment_service.auth.store import KeyStore
from payment_service.db import RawReads, create_engine, create_session_factory
from payment_service.edge import RequestLimitsMiddleware, ResponseEnvelopeMiddleware
from payment_service.errors import install_error_handlers
from payment_service.http_metrics import RouteLabelInstrumentatorMiddleware
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.observability import HTTP_LATENCY_BUCKETS, init_metric_series
from payment_service.ratelimit import RateLimiter
from payment_service.services.health import SharedProbe
from payment_service.settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

DESCRIPTION = """Charges riders exactly once per trip however often the call is retried,
refunds without ever refunding too much, issues receipts and notifies the
Notification service through an outbox. Errors are RFC 9457 problem details."""


def create_app(
    settings: Settings | None = None,
    *,
    run_dispatcher: bool | None = None,
    run_reconciler: bool | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the app; `run_dispatcher` / `run_reconciler` None follow OUTBOX_ENABLED and
    RECONCILE_ENABLED. Traced when OTEL_EXPORTER_OTLP_ENDPOINT is set, or with the
    `tracer_provider` given (tests: an in-memory exporter)."""
    from payment_service import tracing

    settings = settings or load_settings()
    limiter = RateLimiter(settings)
    provider = tracer_provider or tracing.provider_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.configured_database_url
        if url is None:
            raise ConfigurationError(
                "no database configured: set DATABASE_URL (or DB_HOST/DB_NAME/DB_USER/DB_PASS),"
                " or use `payment-service serve`/`dev`, which start an embedded PostgreSQL"
            )
        async with AsyncExitStack() as stack:
            if provider is not None:
                # Before the HTTP clients below exist; spans still buffered go out at exit.
                tracing.enable(provider)
                stack.callback(provider.force_flush)
            engine = create_engine(settings, url)
            stack.push_async_callback(engine.dispose)
            if provider is not None:
                tracing.instrument_engine(engine, provider)
            app.state.engine = engine
            app.state.session_factory = create_session_factory(engine)
            # The hot reads (health, GET payments) run on asyncpg, through this pool.
            app.state.reads = RawReads(
                engine,
                provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
                if provider is not None
                else None,
            )
            app.state.health_probe = SharedProbe(app.state.reads)
            app.state.guard = Guard(
                auth_required=settings.auth_required,
                keys=KeyStore(app.state.session_factory, settings.api_key_cache_seconds),
                limiter=limiter,
            )
            from payment_service.clients.gateway import build_gateway
            from payment_service.clients.trip import TripClient

            app.state.trip_client = await stack.enter_async_context(
                TripClient(settings, tracer_provider=provider)
            )
            gateway = build_gateway(settings, tracer_provider=provider)
            stack.push_async_callback(gateway.aclose)
            app.state.gateway = gateway
            dispatch = settings.outbox_enabled if run_dispatcher is None else run_dispatcher
            if dispatch:
                from payment_service.worker.dispatcher import OutboxDispatcher

                dispatcher = OutboxDispatcher(
                    settings, app.state.session_factory, tracer_provider=provider
                )
                await stack.enter_async_context(dispatcher.running())
            reconcile = settings.reconcile_enabled if run_reconciler is None else run_reconciler
            if reconcile:
                from payment_service.worker.reconciler import Reconciler

                reconciler = Reconciler(settings, app.state.session_factory, gateway)
                await stack.enter_async_context(reconciler.running())
            # What exists now lives as long as the app: out of the collector's full passes.
            # Under load in-flight objects reach the oldest generation often enough that
            # a full pass ran every ~0.5 s, walking these ~170k objects for 55-110 ms each
            # time with the loop stopped: most of the p99. Unfrozen at exit, so a process
            # that builds several apps (tests) collects each one's objects afterwards.
            gc.freeze()
            stack.callback(gc.unfreeze)
            log.info("payment service started", extra={"version": __version__})
            yield
        log.info("payment service stopped")

    app = FastAPI(
        title="Payment Service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        default_response_class=MoneyJSONResponse,
        # Tracing is ours (`tracing.instrument_app`, with the app's own provider), and the
        # HTTP metrics are Prometheus'. FastAPI's native telemetry would otherwise look up
        # the global OpenTelemetry providers (environment reads) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (health, payments, charges, refunds, tips, ledger, receipts, webhooks):
        document_scopes(module.router)
        # The routers' routes, not the routers: each already carries its router's prefix,
        # tags and dependencies, and an included router is one more layer of matching
        # (FastAPI's _IncludedRouter) on every request.
        app.router.routes.extend(module.router.routes)
    # After the API: routing tries routes in order, so the docs, their assets and the
    # problem catalogue cost the API's requests no matching.
    install_docs(app)

    init_metric_series()
    # HTTP metrics live in a registry of this app (a second app in one process, as in
    # tests, would otherwise find the names taken and record nothing); business metrics
    # are process-wide. /metrics serves both.
    http_registry = CollectorRegistry(auto_describe=True)
    # Exact status codes (`status="503"`), so alerts can tell a 503 outage from a 500 bug.
    # prometheus-fastapi-instrumentator's middleware, labelling from the route routing chose.
    app.add_middleware(
        RouteLabelInstrumentatorMiddleware,
        should_group_status_codes=False,
        should_ignore_untemplated=True,
        excluded_handlers=["/metrics", "/static/.*"],
        registry=http_registry,
        latency_lowr_buckets=HTTP_LATENCY_BUCKETS,
    )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(http_registry) + generate_latest(REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # Rate limiting and authentication happen in each route's dependencies (inside the
    # instrumentation, so 401/403/429 are counted); the envelope carries their results out.
    # Outermost last. The limits run before routing (and inside the envelope, so
    # rejections carry the request id and the response headers).
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        read_timeout_seconds=settings.request_read_timeout_seconds,
    )
    app.add_middleware(ResponseEnvelopeMiddleware)
    if provider is not None:
        tracing.instrument_app(app, provider)  # outermost: the span covers every middleware
    return app
