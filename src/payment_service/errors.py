"""Domain errors and their one rendering: RFC 9457 problem details.

Each service module defines its own `...Error` subclasses carrying the HTTP status;
`install_error_handlers` renders them, FastAPI's validation errors, unknown routes
and anything unexpected the same way. No stack trace or SQL reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from payment_service.jsonutil import dumps

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Problem types are served by this service (GET /problems/<slug>, api/problems.py).
PROBLEM_BASE = "/problems/"


class PaymentServiceError(Exception):
    """Base of every error the service answers with on purpose."""

    status: int = 500
    type: str = "internal-error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class NotFoundError(PaymentServiceError):
    status = 404
    type = "not-found"
    title = "Not Found"


class ConflictError(PaymentServiceError):
    status = 409
    type = "conflict"
    title = "Conflict"


class UnprocessableError(PaymentServiceError):
    status = 422
    type = "unprocessable"
    title = "Unprocessable Content"


class BadRequestError(PaymentServiceError):
    status = 400
    type = "bad-request"
    title = "Bad Request"


class ServiceUnavailableError(PaymentServiceError):
    status = 503
    type = "service-unavailable"
    title = "Service Unavailable"


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Render one problem document."""
    body: dict[str, Any] = {
        "type": type_ if type_ == "about:blank" else PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        errors.append(
            {
                "field": ".".join(
                    loc[1:] if loc and loc[0] in {"body", "query", "path", "header"} else loc
                ),
                "location": loc[0] if loc else "",
                "message": error.get("msg", "invalid value"),
                "type": error.get("type", "value_error"),
            }
        )
    return errors


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through `problem_response`."""

    @app.exception_handler(PaymentServiceError)
    async def _domain(request: Request, exc: PaymentServiceError) -> Response:
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = _field_errors(exc)
        if any(error["type"] == "json_invalid" for error in errors):
            return problem_response(
                400,
                "Malformed JSON",
                "The request body is not valid JSON.",
                type_="malformed-json",
                instance=request.url.path,
            )
        summary = "; ".join(f"{e['field'] or e['location']}: {e['message']}" for e in errors)
        return problem_response(
            422,
            "Validation Failed",
            summary or "The request is not valid.",
            type_="validation-error",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route matches {request.method} {request.url.path}."
        from http import HTTPStatus

        try:
            title = HTTPStatus(exc.status_code).phrase
        except ValueError:
            title = "Error"
        return problem_response(
            exc.status_code,
            title,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Last resort (RequestIdMiddleware normally answers first, with the request id).
        log.exception("unhandled error", extra={"path": request.url.path})
        return internal_error_response(request.url.path)


def internal_error_response(path: str) -> Response:
    """The 500 problem: says nothing about internals."""
    return problem_response(
        500,
        "Internal Server Error",
        "The server could not complete the request.",
        type_="internal-error",
        instance=path,
    )


# One shared component, added to the document by api/docs.py (schemas/problem.py).
PROBLEM_SCHEMA: dict[str, Any] = {
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json errors of a route.

    429 (rate limit) and 500 can happen on every rate-limited route, so they are always listed.
    """
    statuses = tuple(sorted({*statuses, 429, 500}))
    descriptions = {
        400: "Malformed JSON or conflicting idempotency keys",
        404: "Not found",
        409: "Conflict with the current state",
        422: "Validation failed or the request cannot be processed",
        429: "Rate limit exceeded",
        500: "Unexpected error",
        503: "A dependency is unavailable; retry later",
    }
    return {
        status: {"description": descriptions.get(status, "Error"), **PROBLEM_SCHEMA}
        for status in statuses
    }
