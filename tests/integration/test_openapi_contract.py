"""The OpenAPI document as generated clients and validators take it: stable operationIds, one
`Problem` component, documented headers, integer bounds, and every real response of a
scenario valid against the schema the document gives for it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from payment_sandbox.runner import Sandbox
from payment_service.api.problems import catalogue

OPERATION_IDS = {
    ("get", "/v1/payments"): "listPayments",
    ("get", "/v1/payments/{payment_id}"): "getPayment",
    ("post", "/v1/payments/charge"): "chargeTrip",
    ("post", "/v1/payments/{payment_id}/refund"): "refundPayment",
    ("get", "/v1/payments/{payment_id}/refunds"): "listRefunds",
    ("get", "/v1/payments/{payment_id}/receipt"): "getReceipt",
    ("get", "/v1/payments/{payment_id}/receipt.html"): "getReceiptHtml",
    ("post", "/v1/payments/{payment_id}/tips"): "tipPayment",
    ("post", "/v1/payments/{payment_id}/adjustments"): "adjustFare",
    ("get", "/v1/trips/{trip_id}/ledger"): "getTripLedger",
    ("get", "/v1/drivers/{driver_id}/earnings"): "getDriverEarnings",
    ("get", "/health"): "health",
    ("get", "/health/live"): "liveness",
    ("get", "/health/ready"): "readiness",
    ("get", "/problems"): "listProblemTypes",
    ("get", "/problems/{slug}"): "getProblemType",
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _nodes(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _nodes(value)
    elif isinstance(node, list):
        for value in node:
            found += _nodes(value)
    return found


class Contract:
    """Validates a real response against what the document says for its operation."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.operations = _operations(document)

    def check(self, method: str, path: str, response: httpx.Response) -> None:
        operation = self.operations[(method, path)]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {path}: {status} undocumented"
        documented = operation["responses"][status]
        media_type = response.headers["content-type"].split(";")[0]
        content = documented.get("content", {})
        assert media_type in content, f"{method} {path} {status}: {media_type} undocumented"
        schema = content[media_type].get("schema", {})
        body: Any = response.text if media_type == "text/html" else response.json()
        # The whole document is the root, so `#/components/...` references resolve.
        root = {"components": self.document["components"], **schema}
        errors = [e.message for e in Draft202012Validator(root).iter_errors(body)]
        assert errors == [], f"{method} {path} {status}: {errors}"
        for name in documented.get("headers", {}):
            if name == "X-Request-ID":
                assert name in response.headers, f"{method} {path} {status}: no {name}"


@pytest.fixture
async def contract(money_client: httpx.AsyncClient) -> Contract:
    return Contract(await _document(money_client))


async def test_operation_ids_are_stable_and_camel_case(client: httpx.AsyncClient) -> None:
    """Each endpoint has the documented operationId (what generated clients name methods by)."""
    operations = _operations(await _document(client))

    assert {key: operations[key].get("operationId") for key in OPERATION_IDS} == OPERATION_IDS


async def test_every_problem_response_references_the_one_problem_component(
    client: httpx.AsyncClient,
) -> None:
    """Every problem+json response is `$ref: Problem`; the component requires the RFC members."""
    document = await _document(client)

    schemas = [
        response["content"]["application/problem+json"]["schema"]
        for operation in _operations(document).values()
        for response in operation["responses"].values()
        if "application/problem+json" in response.get("content", {})
    ]
    assert schemas and all(schema == PROBLEM_REF for schema in schemas)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


async def test_headers_are_documented(client: httpx.AsyncClient) -> None:
    """X-Request-ID on every response; Idempotent-Replayed on charge/refund 2xx; Retry-After
    on 409/429/503; RateLimit-* on 429."""
    operations = _operations(await _document(client))

    for (method, path), operation in operations.items():
        for status, response in operation["responses"].items():
            headers = set(response.get("headers", {}))
            assert "X-Request-ID" in headers, (method, path, status)
            if status in {"409", "429", "503"}:
                assert "Retry-After" in headers, (method, path, status)
            if status == "429":
                assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= headers
    for key in [("post", "/v1/payments/charge"), ("post", "/v1/payments/{payment_id}/refund")]:
        for status, response in operations[key]["responses"].items():
            if status.startswith("2"):
                assert "Idempotent-Replayed" in response["headers"], (key, status)


async def test_integer_bounds_are_integers_and_money_has_no_multiple_of(
    client: httpx.AsyncClient,
) -> None:
    """No float bound on an integer (trip_id's maximum is 2**63 - 1 exactly); no float
    `multipleOf` that real amounts such as 40.19 would fail."""
    document = await _document(client)

    nodes = _nodes(document)
    assert not [n for n in nodes if "multipleOf" in n]
    integer_bounds = [
        (n.get("title"), key, n[key])
        for n in nodes
        if n.get("type") == "integer"
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        if key in n
    ]
    assert integer_bounds and all(type(value) is int for _, _, value in integer_bounds)
    trip_id = document["components"]["schemas"]["ChargeRequest"]["properties"]["trip_id"]
    assert trip_id["maximum"] == 2**63 - 1
    assert '"maximum":9223372036854775807' in json.dumps(trip_id, separators=(",", ":"))


async def test_refund_body_is_optional_and_a_plain_model(client: httpx.AsyncClient) -> None:
    """The refund body is optional (all that remains) and is `RefundRequest`, not anyOf null."""
    operations = _operations(await _document(client))

    body = operations[("post", "/v1/payments/{payment_id}/refund")]["requestBody"]
    assert body["required"] is False
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RefundRequest"
    }


async def test_problem_catalogue_serves_every_type(client: httpx.AsyncClient) -> None:
    """GET /problems lists every type with a description; each `type` URL answers JSON and
    HTML; a real 404's `type` is one of them."""
    listing = await client.get("/problems")
    assert listing.status_code == 200
    types = listing.json()["problems"]
    assert {p["slug"] for p in types} == set(catalogue())
    assert {"payment-not-found", "validation-error", "trip-mismatch"} <= {p["slug"] for p in types}
    for problem in types:
        assert problem["description"] != problem["title"], f"{problem['slug']}: no description"
        assert problem["type"] == f"/problems/{problem['slug']}"
        described = await client.get(problem["type"])
        assert described.status_code == 200 and described.json() == problem
    page = await client.get("/problems/trip-mismatch", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "Rider Or Driver Does Not Match The Trip" in page.text

    missing = await client.get("/v1/payments/987654321")
    assert (await client.get(missing.json()["type"])).status_code == 200
    unknown = await client.get("/problems/no-such-type")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_every_response_of_a_scenario_validates_against_the_document(
    money_client: httpx.AsyncClient,
    contract: Contract,
    new_trip_id: Callable[[], int],
    peers: Sandbox,
    seeded: object,
) -> None:
    """List, get, charge 201 and 202 (pending, declined), refund, refunds, receipts, 400, 404,
    409, 422 and 503 answers are valid against their documented schema (jsonschema, the
    document's own components)."""
    api = money_client
    contract.check("get", "/v1/payments", await api.get("/v1/payments", params={"limit": 5}))
    contract.check("get", "/v1/payments/{payment_id}", await api.get("/v1/payments/1"))

    trip_id = new_trip_id()
    charge = {"idempotency_key": f"contract-{trip_id}", "trip_id": trip_id, "method": "CARD"}
    charged = await api.post("/v1/payments/charge", json=charge)
    assert charged.status_code == 201
    contract.check("post", "/v1/payments/charge", charged)
    replayed = await api.post("/v1/payments/charge", json=charge)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    contract.check("post", "/v1/payments/charge", replayed)

    pending_trip = new_trip_id()
    pending = await api.post(
        "/v1/payments/charge",
        json={
            "idempotency_key": f"contract-{pending_trip}",
            "trip_id": pending_trip,
            "method": "UPI",
            "metadata": {"simulate": "pending"},
        },
    )
    assert pending.status_code == 202
    contract.check("post", "/v1/payments/charge", pending)

    payment_id = charged.json()["payment_id"]
    refund_path = "/v1/payments/{payment_id}/refund"
    refunded = await api.post(
        f"/v1/payments/{payment_id}/refund",
        json={"idempotency_key": f"contract-refund-{trip_id}", "amount": 1.25},
    )
    assert refunded.status_code == 200
    contract.check("post", refund_path, refunded)
    contract.check(
        "get",
        "/v1/payments/{payment_id}/refunds",
        await api.get(f"/v1/payments/{payment_id}/refunds"),
    )
    contract.check(
        "get",
        "/v1/payments/{payment_id}/receipt",
        await api.get(f"/v1/payments/{payment_id}/receipt"),
    )
    html = await api.get(f"/v1/payments/{payment_id}/receipt.html")
    assert html.status_code == 200
    contract.check("get", "/v1/payments/{payment_id}/receipt.html", html)

    not_found = await api.get("/v1/payments/987654321")
    assert not_found.status_code == 404
    contract.check("get", "/v1/payments/{payment_id}", not_found)
    invalid = await api.get("/v1/payments", params={"limit": 0})
    assert invalid.status_code == 422
    contract.check("get", "/v1/payments", invalid)
    wrong_rider = dict(charge, idempotency_key=f"contract-rider-{trip_id}", trip_id=new_trip_id())
    mismatch = await api.post("/v1/payments/charge", json=dict(wrong_rider, rider_id=10**12))
    assert mismatch.status_code == 422 and mismatch.json()["type"] == "/problems/trip-mismatch"
    contract.check("post", "/v1/payments/charge", mismatch)
    paid_again = await api.post(
        "/v1/payments/charge", json=dict(charge, idempotency_key=f"contract-again-{trip_id}")
    )
    assert paid_again.status_code == 409
    contract.check("post", "/v1/payments/charge", paid_again)
    not_refundable = await api.post(
        f"/v1/payments/{pending.json()['payment_id']}/refund",
        json={"idempotency_key": f"contract-refund-{pending_trip}"},
    )
    assert not_refundable.status_code == 409
    contract.check("post", refund_path, not_refundable)

    too_much = await api.post(
        f"/v1/payments/{payment_id}/refund",
        json={"idempotency_key": f"contract-refund-big-{trip_id}", "amount": 100000},
    )
    assert too_much.status_code == 422
    contract.check("post", refund_path, too_much)
    no_key = await api.post("/v1/payments/charge", json={"trip_id": trip_id, "method": "CARD"})
    assert no_key.status_code == 400
    contract.check("post", "/v1/payments/charge", no_key)
    malformed = await api.post(
        "/v1/payments/charge", content=b'{"trip_id": ', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    contract.check("post", "/v1/payments/charge", malformed)
    declined_trip = new_trip_id()
    declined = await api.post(
        "/v1/payments/charge",
        json={
            "idempotency_key": f"contract-{declined_trip}",
            "trip_id": declined_trip,
            "method": "CARD",
            "metadata": {"simulate": "decline"},
        },
    )
    assert (declined.status_code, declined.json()["status"]) == (202, "FAILED")
    contract.check("post", "/v1/payments/charge", declined)
    await peers.set_fault("trip", "down")
    unavailable = await api.post(
        "/v1/payments/charge",
        json=dict(charge, idempotency_key="contract-down", trip_id=new_trip_id()),
    )
    await peers.set_fault("trip", "up")
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"]
    contract.check("post", "/v1/payments/charge", unavailable)
    missing_html = await api.get("/v1/payments/987654321/receipt.html")
    assert missing_html.status_code == 404
    contract.check("get", "/v1/payments/{payment_id}/receipt.html", missing_html)


async def test_fractional_amounts_validate(peers: Sandbox, contract: Contract) -> None:
    """An amount such as 40.19 (which a float multipleOf 0.01 rejects) validates as Money."""
    schema = {"components": contract.document["components"]}
    schema["$ref"] = "#/components/schemas/PaymentRead/properties/amount"
    assert list(Draft202012Validator(schema).iter_errors(40.19)) == []
