"""The problem-type catalogue: every `type` of a problem document is a URL served here.

`GET /problems` lists the types, `GET /problems/{slug}` describes one (JSON, or an HTML
page when `text/html` is preferred). The catalogue is built from the error classes
themselves (their `type`, `title` and `status`), so a new `...Error` appears without
being registered; its one-line description comes from `DESCRIPTIONS` or, failing that,
from the class's own docstring.
"""

from __future__ import annotations

import functools
import importlib
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi import Path as PathParam
from starlette.responses import HTMLResponse, Response

from payment_service.api.receipts import HTML, preferred_media_type
from payment_service.errors import (
    PROBLEM_BASE,
    NotFoundError,
    PaymentServiceError,
    problem_responses,
)
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.schemas.problem import ProblemType, ProblemTypeList

router = APIRouter(prefix="/problems", tags=["problems"])

# Modules that define `...Error` classes: imported so that their classes are known.
ERROR_MODULES = (
    "payment_service.services.charge",
    "payment_service.services.idempotency",
    "payment_service.services.payments",
    "payment_service.services.refunds",
    "payment_service.services.tips",
    "payment_service.services.adjustments",
    "payment_service.clients.trip",
    "payment_service.clients.gateway",
    "payment_service.services.webhooks",
    "payment_service.auth.guard",
    "payment_service.ratelimit",
)

# Types rendered by a handler or middleware rather than raised as a class.
HANDLER_TYPES: tuple[tuple[str, str, int], ...] = (
    ("malformed-json", "Malformed JSON", 400),
    ("validation-error", "Validation Failed", 422),
    ("rate-limited", "Too Many Requests", 429),
    ("refund-declined", "Refund Declined", 422),
    ("database-unavailable", "Database Unavailable", 503),
    ("content-too-large", "Content Too Large", 413),
    ("request-header-fields-too-large", "Request Header Fields Too Large", 431),
    ("request-timeout", "Request Timeout", 408),
)

DESCRIPTIONS = {
    "bad-request": "The request cannot be accepted as sent.",
    "malformed-json": "The request body is not valid JSON.",
    "idempotency-key-missing": (
        "A charge or refund needs an idempotency key (body `idempotency_key` or the "
        "`Idempotency-Key` header), 1..255 characters."
    ),
    "idempotency-key-mismatch": (
        "The body's `idempotency_key` and the `Idempotency-Key` header differ: send one."
    ),
    "not-found": "The resource does not exist.",
    "payment-not-found": "No payment has this id.",
    "conflict": "The request conflicts with the current state of the resource.",
    "trip-already-paid": (
        "The trip already has a live (non-FAILED) payment; the problem names it."
    ),
    "idempotency-in-flight": (
        "A request with this idempotency key is still running: retry after `Retry-After`."
    ),
    "idempotency-lease-lost": (
        "Another request took over this idempotency key after its lease expired: retry."
    ),
    "payment-not-refundable": "Only SUCCESS and PARTIALLY_REFUNDED payments can be refunded.",
    "unprocessable": "The request is well-formed but cannot be processed.",
    "validation-error": "A field is missing or invalid; `errors` lists each field.",
    "trip-not-found": "The Trip service does not know this trip.",
    "trip-not-completed": "Only COMPLETED trips can be charged.",
    "trip-mismatch": "The rider_id or driver_id given differs from the trip's.",
    "idempotency-key-reused": (
        "This idempotency key was used with a different request body: use a new key."
    ),
    "invalid-refund-amount": (
        "The refund amount is not > 0, has more than two decimals, or exceeds what remains."
    ),
    "rate-limited": "Too many requests from this client: retry after `Retry-After`.",
    "internal-error": "An unexpected error; nothing about it is disclosed. Retry or report it.",
    "service-unavailable": "A dependency is unavailable: retry after `Retry-After`.",
    "trip-service-unavailable": (
        "The Trip service is down or slow; nothing was stored, retry with the same key."
    ),
    "gateway-unavailable": ("The payment processor could not be reached; retry with the same key."),
    "refund-declined": (
        "The payment processor refused the refund; it is recorded as FAILED and its amount "
        "stays refundable."
    ),
    "webhook-invalid": (
        "The processor webhook's signature, timestamp (5-minute tolerance) or payload did "
        "not verify; nothing was changed."
    ),
    "webhook-provider-unknown": "This service takes webhooks from its configured processor only.",
    "database-unavailable": (
        "The database could not be reached or did not answer in time: retry after "
        "`Retry-After`; nothing was half-done."
    ),
    "content-too-large": "The request body is larger than `MAX_BODY_BYTES`.",
    "request-header-fields-too-large": "The request's headers are larger than `MAX_HEADER_BYTES`.",
    "request-timeout": (
        "The request did not arrive in full within `REQUEST_READ_TIMEOUT_SECONDS`."
    ),
    "unauthenticated": (
        "Send a valid API key as `Authorization: Bearer <key>`; it is missing, unknown or revoked."
    ),
    "forbidden": "The API key lacks the scope this operation needs (read, charge, refund).",
    "gateway-misconfigured": (
        "The payment processor refused the service's credentials: an operator must act."
    ),
}


def _error_classes() -> list[type[PaymentServiceError]]:
    for module in ERROR_MODULES:
        importlib.import_module(module)
    found: list[type[PaymentServiceError]] = []
    pending = [PaymentServiceError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _own_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@functools.cache
def catalogue() -> dict[str, ProblemType]:
    """Every problem type the service answers with, by slug (sorted by status, then slug)."""
    entries: dict[str, ProblemType] = {}

    def add(slug: str, title: str, status: int, doc: str = "") -> None:
        if slug not in entries:
            entries[slug] = ProblemType(
                type=PROBLEM_BASE + slug,
                slug=slug,
                title=title,
                status=status,
                description=DESCRIPTIONS.get(slug) or doc or title,
            )

    for cls in _error_classes():
        add(cls.type, cls.title, cls.status, _own_doc(cls))
    for slug, title, status in HANDLER_TYPES:
        add(slug, title, status)
    return dict(sorted(entries.items(), key=lambda item: (item[1].status, item[0])))


class ProblemTypeNotFoundError(NotFoundError):
    """No problem type has this slug."""

    type = "problem-type-not-found"
    title = "Problem Type Not Found"


def _html(problem: ProblemType) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(problem.title)}</title></head><body>"
        f"<h1>{escape(problem.title)}</h1><p>HTTP {problem.status}</p>"
        f"<p>{escape(problem.description)}</p>"
        f"<p><code>type: {escape(problem.type)}</code></p>"
        '<p><a href="/problems">All problem types</a></p></body></html>'
    )


@router.get(
    "",
    response_model=ProblemTypeList,
    operation_id="listProblemTypes",
    summary="The catalogue of problem types (`type` of every problem document)",
    responses=problem_responses(),
)
async def list_problem_types() -> MoneyJSONResponse:
    problems = [p.model_dump() for p in catalogue().values()]
    return MoneyJSONResponse({"problems": problems, "count": len(problems)})


@router.get(
    "/{slug}",
    response_model=ProblemType,
    operation_id="getProblemType",
    summary="One problem type: its title, status and what it means",
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
        **problem_responses(404, 422),
    },
)
async def get_problem_type(
    slug: Annotated[str, PathParam(max_length=64, examples=["payment-not-found"])],
    accept: Annotated[str | None, Header(description="`text/html` for a page")] = None,
) -> Response:
    problem = catalogue().get(slug)
    if problem is None:
        raise ProblemTypeNotFoundError(f"No problem type {slug!r}; GET /problems lists them.")
    if preferred_media_type(accept) == HTML:
        return HTMLResponse(_html(problem))
    body: dict[str, Any] = problem.model_dump()
    return MoneyJSONResponse(body)
