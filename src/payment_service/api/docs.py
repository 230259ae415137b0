"""Swagger UI and ReDoc served from local assets, so /docs renders with no internet; the
finishing touches of /openapi.json that generated clients need; the problem catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_URL = "/static/docs"


def _assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


IDEMPOTENT_OPERATIONS = frozenset({"chargeTrip", "refundPayment"})
OPTIONAL_BODY_OPERATIONS = {"refundPayment": "RefundRequest"}
INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id (the one sent, else a new one); also in the logs.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request "
        "with the same idempotency key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Limit": {
        "description": "Requests allowed per window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in the current window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window resets.",
        "schema": {"type": "integer", "minimum": 0},
    },
}


def _header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _headers_for(operation_id: str, status: str) -> list[str]:
    names = ["X-Request-ID"]
    if status.startswith("2") and operation_id in IDEMPOTENT_OPERATIONS:
        names.append("Idempotent-Replayed")
    if status in {"409", "429", "503"}:
        names.append("Retry-After")
    if status == "429":
        names += ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
    return names


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def _integer_bounds(document: dict[str, Any]) -> None:
    """Write the bounds of integer schemas as integers.

    FastAPI's OpenAPI model types `maximum` as float, so `le=2**63 - 1` comes out as
    9.223372036854776e+18 (which is 2**63, one too many); such a float is mapped back
    to the largest BIGINT, any other integral float to its int.
    """
    from payment_service.schemas.payment import MAX_ID

    for node in _schemas(document):
        if node.get("type") != "integer":
            continue
        for key in INTEGER_BOUNDS:
            value = node.get(key)
            if isinstance(value, float) and value.is_integer():
                node[key] = MAX_ID if value == float(MAX_ID) else int(value)


def finish_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """The shared `Problem` component, documented headers, optional bodies, int bounds."""
    from payment_service.schemas.problem import Problem

    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    components["headers"] = dict(HEADERS)

    for item in document.get("paths", {}).values():
        for operation in item.values():
            operation_id = operation.get("operationId", "")
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                for name in _headers_for(operation_id, status):
                    headers.setdefault(name, _header_ref(name))
            if operation_id in OPTIONAL_BODY_OPERATIONS:
                # `Model | None` is documented as anyOf [Model, null]; generated clients
                # handle an optional body of the plain model better.
                ref = f"#/components/schemas/{OPTIONAL_BODY_OPERATIONS[operation_id]}"
                operation["requestBody"] = {
                    "required": False,
                    "content": {"application/json": {"schema": {"$ref": ref}}},
                }
    _integer_bounds(document)
    return document


def install_openapi(app: FastAPI) -> None:
    """Generate /openapi.json once, as FastAPI does, then finish it (`finish_openapi`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """Mount the assets and the two pages (the app is created with docs_url=None), serve the
    problem catalogue, and finish the OpenAPI document."""
    from payment_service.api import problems

    app.router.routes.extend(problems.router.routes)  # as the API's: no _IncludedRouter layer
    install_openapi(app)
    app.mount(STATIC_URL, StaticFiles(directory=_assets_dir()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
