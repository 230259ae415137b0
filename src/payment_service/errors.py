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


DATABASE_RETRY_AFTER_SECONDS = 2
"""A restart or failover of PostgreSQL takes seconds; the pool reconnects by itself."""


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) means the database cannot be reached right now.

    Covers SQLAlchemy's disconnect detection (`connection_invalidated`), its pool
    timeout, `InterfaceError`/`OperationalError`, and the raw asyncpg / OS errors and
    timeouts a connect or a dropped connection raise. Anything else (a constraint, a
    bug) is not an outage and stays a 500.
    """
    import asyncpg
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(
            current,
            sa_exc.TimeoutError  # pool exhausted for DB_POOL_TIMEOUT_SECONDS
            | sa_exc.InterfaceError
            | sa_exc.OperationalError
            | sa_exc.DisconnectionError
            | asyncpg.PostgresConnectionError  # ConnectionDoesNotExistError, ...
            | asyncpg.CannotConnectNowError
            | asyncpg.AdminShutdownError
            | asyncpg.CrashShutdownError
            | asyncpg.InterfaceError
            | asyncpg.InternalClientError  # a pooled connection the server's exit left busy
            | asyncpg.ConnectionFailureError,
        ):
            return True
        # Refused, reset, unreachable, or a connect timeout (asyncio.TimeoutError is
        # TimeoutError): an outage when raised by the driver, else a bug like any other.
        if isinstance(current, OSError | TimeoutError) and _raised_by_database_driver(current):
            return True
        if isinstance(current, sa_exc.DBAPIError):
            current = current.orig
        else:
            current = current.__cause__ or current.__context__
    return False


def _raised_by_database_driver(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        traceback = traceback.tb_next
    return False


def database_unavailable_response(path: str) -> Response:
    """The 503 of a database outage: retry shortly, nothing was done."""
    return problem_response(
        503,
        "Database Unavailable",
        "The database is unreachable; nothing was changed. Retry shortly.",
        type_="database-unavailable",
        instance=path,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


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
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            if detail == "Method Not Allowed":
                detail = f"{request.url.path} allows {', '.join(allowed)}."
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
            headers=headers,
        )

    async def _last_resort(request: Request, exc: Exception) -> Response:
        return last_resort_response(exc, request.url.path)

    # Handled here rather than by the last-resort handler: these are outages (503), and
    # an answer from here is final (no traceback with SQL re-raised to the server log).
    import asyncpg
    from sqlalchemy.exc import SQLAlchemyError

    # InternalClientError derives from Exception alone (not PostgresError/InterfaceError):
    # a pooled connection PostgreSQL's exit left busy raises it, an outage like the rest.
    for exc_class in (
        SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(exc_class, _last_resort)

    # Anything else, too (ResponseEnvelopeMiddleware normally answers first, with the
    # request id): an outage wrapped in another error (its cause) is still a 503.
    app.add_exception_handler(Exception, _last_resort)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def last_resort_response(exc: BaseException, path: str) -> Response:
    """The answer for an error no domain handler took: 503 with Retry-After for a
    database outage (whatever wraps it), else a logged 500."""
    if not is_database_unavailable(exc):
        log.exception("unhandled error", extra={"path": path})
        return internal_error_response(path)
    log.warning("database unavailable", extra={"path": path, "error": type(exc).__name__})
    return database_unavailable_response(path)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (HEAD wherever GET is), for `Allow`.

    Asks the router whether each method would fully match, so routes nested in
    included routers count too.
    """
    from starlette.routing import Match

    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches(dict(request.scope, method=method))[0] == Match.FULL for route in routes
        )
    ]
    if "GET" in allowed and "HEAD" not in allowed:  # HEAD is served as GET (edge.py)
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return allowed


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
