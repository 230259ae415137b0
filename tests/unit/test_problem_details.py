"""RFC 9457 rendering: `problem_response`, the error handlers, and the OpenAPI entries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from payment_service.errors import (
    PROBLEM_BASE,
    PROBLEM_JSON,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PaymentServiceError,
    ServiceUnavailableError,
    UnprocessableError,
    install_error_handlers,
    problem_response,
    problem_responses,
)
from payment_service.schemas.problem import Problem


def test_problem_response_has_type_title_status_detail() -> None:
    """A problem has the four RFC 9457 members and the problem+json media type."""
    response = problem_response(409, "Conflict", "Trip 7 is already paid.", type_="conflict")

    assert response.status_code == 409
    assert response.media_type == PROBLEM_JSON
    assert json.loads(response.body) == {
        "type": PROBLEM_BASE + "conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "Trip 7 is already paid.",
    }


def test_problem_response_keeps_about_blank_type() -> None:
    """The default type is `about:blank`, not prefixed with the problem base URL."""
    response = problem_response(404, "Not Found", "No route.")

    assert json.loads(response.body)["type"] == "about:blank"


def test_problem_response_adds_instance_extensions_and_headers() -> None:
    """`instance`, extension members and headers are passed through."""
    response = problem_response(
        503,
        "Service Unavailable",
        "Trip service is down.",
        instance="/v1/payments/charge",
        headers={"Retry-After": "5"},
        payment_id=12,
    )

    body = json.loads(response.body)
    assert body["instance"] == "/v1/payments/charge"
    assert body["payment_id"] == 12
    assert response.headers["retry-after"] == "5"


def test_problem_response_writes_decimals_as_json_numbers() -> None:
    """A Decimal extension (e.g. what remains refundable) is written as an exact JSON number."""
    response = problem_response(422, "Unprocessable", "Too much.", remaining=Decimal("12.30"))

    assert b'"remaining":12.30' in response.body


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PaymentServiceError, 500),
        (BadRequestError, 400),
        (NotFoundError, 404),
        (ConflictError, 409),
        (UnprocessableError, 422),
        (ServiceUnavailableError, 503),
    ],
)
def test_error_classes_carry_their_status(error: type[PaymentServiceError], status: int) -> None:
    """Each base error class carries its HTTP status, and its detail defaults to its title."""
    instance = error()

    assert instance.status == status
    assert instance.detail == instance.title
    assert str(instance) == instance.title


def test_problem_responses_document_problem_json_for_each_status() -> None:
    """`problem_responses(...)` gives a problem+json entry per status, plus 429 and 500 always,
    each referencing the one shared `Problem` component."""
    entries = problem_responses(404, 422, 599)

    assert set(entries) == {404, 422, 429, 500, 599}
    for entry in entries.values():
        schema = entry["content"][PROBLEM_JSON]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}
        assert entry["description"]
    assert set(Problem.model_json_schema()["required"]) == {"type", "title", "status", "detail"}


# --- the handlers, on a small app with no database ---


class Body(BaseModel):
    trip_id: int = Field(gt=0)
    tags: dict[str, int] = {}


class TripConflictError(ConflictError):
    type = "trip-already-paid"
    title = "Trip Already Paid"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client over a bare FastAPI app with the service's error handlers installed."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise TripConflictError("Trip 7 is paid.", headers={"X-Extra": "1"}, payment_id=3)

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, "short and stout")

    @app.get("/query")
    async def query(limit: Annotated[int, Query(ge=1)] = 1) -> None:
        return None

    @app.post("/body")
    async def body(payload: Body) -> None:
        return None

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_domain_error_is_rendered_with_its_type_and_extensions(
    http: httpx.AsyncClient,
) -> None:
    """A PaymentServiceError subclass renders its status, type, title, headers and extras."""
    response = await http.get("/conflict")

    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["x-extra"] == "1"
    assert response.json() == {
        "type": PROBLEM_BASE + "trip-already-paid",
        "title": "Trip Already Paid",
        "status": 409,
        "detail": "Trip 7 is paid.",
        "instance": "/conflict",
        "payment_id": 3,
    }


async def test_http_exception_is_rendered_with_its_phrase_and_detail(
    http: httpx.AsyncClient,
) -> None:
    """An HTTPException becomes a problem titled with the status phrase, keeping its detail."""
    response = await http.get("/teapot")

    assert response.status_code == 418
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert (problem["title"], problem["detail"]) == ("I'm a Teapot", "short and stout")


async def test_query_validation_error_lists_field_and_location(http: httpx.AsyncClient) -> None:
    """A bad query parameter is a 422 whose `errors` name the field and `query` location."""
    response = await http.get("/query", params={"limit": "0"})

    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "validation-error"
    [error] = problem["errors"]
    assert (error["field"], error["location"], error["type"]) == (
        "limit",
        "query",
        "greater_than_equal",
    )
    assert "limit" in problem["detail"]


async def test_nested_body_error_names_the_dotted_field(http: httpx.AsyncClient) -> None:
    """An error inside the body names its path with dots (tags.a), located in `body`."""
    response = await http.post("/body", json={"trip_id": 1, "tags": {"a": "x"}})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["location"]) == ("tags.a", "body")


async def test_missing_body_field_is_reported(http: httpx.AsyncClient) -> None:
    """A missing required field is reported as `missing` for that field."""
    response = await http.post("/body", json={})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["field"], error["type"]) == ("trip_id", "missing")


async def test_invalid_json_on_a_plain_route_is_a_malformed_json_problem(
    http: httpx.AsyncClient,
) -> None:
    """On a standard route, an unparsable body is a 400 `malformed-json` problem."""
    response = await http.post(
        "/body", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "malformed-json"
    assert problem["title"] == "Malformed JSON"
    assert "errors" not in problem
