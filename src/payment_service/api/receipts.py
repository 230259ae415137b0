"""Receipt endpoint: GET /v1/payments/{id}/receipt as JSON or a printable HTML page.

The service builds the receipt data; this module picks the representation from the
`Accept` header (q-values honoured; JSON unless HTML is strictly preferred) and
renders it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Header
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

from payment_service.api.payments import PaymentId
from payment_service.api.routing import MoneyRoute
from payment_service.auth.guard import RequireRead
from payment_service.dependencies import SessionDep, SettingsDep
from payment_service.errors import problem_responses
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.schemas.receipt import ReceiptRead
from payment_service.services import receipts as receipt_service

router = APIRouter(
    prefix="/v1/payments", tags=["receipts"], route_class=MoneyRoute, dependencies=[RequireRead]
)

JSON = "application/json"
HTML = "text/html"
# Offered representations, the default first: it wins ties and unusable headers.
OFFERED = (JSON, HTML)

# The HTML page may load nothing from anywhere: styles are inline, there is no script.
HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}

CENT = Decimal("0.01")


def _money(value: Decimal | int, currency: str) -> str:
    """`INR 1,234.50`: two decimals and the currency code, never through float."""
    amount = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{currency} {amount:,.2f}"


def _utc(value: datetime) -> str:
    """`2024-02-26 04:48:12 UTC` (a naive time is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_templates = Environment(
    loader=PackageLoader("payment_service", "templates"),
    autoescape=select_autoescape(),
)
_templates.filters["money"] = _money
_templates.filters["utc"] = _utc
_receipt_template = _templates.get_template("receipt.html")


def _media_ranges(accept: str) -> list[tuple[str, str, Decimal]]:
    """`(type, subtype, q)` of each well-formed media range in an Accept header."""
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        type_, slash, subtype = media.lower().partition("/")
        if not slash or not type_ or not subtype:
            continue
        quality = Decimal(1)
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = Decimal(value.strip())
                except InvalidOperation:
                    quality = Decimal(-1)
        if quality.is_finite() and Decimal(0) <= quality <= Decimal(1):
            ranges.append((type_, subtype, quality))
    return ranges


def _quality(offered: str, ranges: list[tuple[str, str, Decimal]]) -> Decimal:
    """The q of the most specific range matching `offered` (0 when none does)."""
    type_, _, subtype = offered.partition("/")
    best: tuple[int, Decimal] = (-1, Decimal(0))
    for range_type, range_subtype, quality in ranges:
        if (range_type, range_subtype) == (type_, subtype):
            specificity = 2
        elif range_type == type_ and range_subtype == "*":
            specificity = 1
        elif (range_type, range_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def preferred_media_type(accept: str | None) -> str:
    """JSON or HTML for an Accept header: HTML only when its q is strictly the higher.

    No header, `*/*`, a tie, or nothing we offer being acceptable all give JSON (the
    seed API's representation; RFC 9110 allows answering with a default).
    """
    if not accept or not accept.strip():
        return JSON
    ranges = _media_ranges(accept)
    chosen, chosen_q = JSON, Decimal(0)
    for offered in OFFERED:
        quality = _quality(offered, ranges)
        if quality > chosen_q:
            chosen, chosen_q = offered, quality
    return chosen


def render_receipt_html(receipt: dict[str, Any]) -> str:
    return _receipt_template.render(r=receipt)


@router.get(
    "/{payment_id}/receipt",
    operation_id="getReceipt",
    response_model=ReceiptRead,
    summary="Get a payment's receipt (JSON or printable HTML)",
    description=(
        "The receipt number is issued on the first request and stored, so it is the same "
        "on every later request (concurrent first requests agree too).\n\n"
        "Content negotiation on `Accept` (q-values honoured): JSON by default and for "
        "`application/json` or `*/*`; a self-contained printable HTML page (inline CSS, no "
        "external assets, times in UTC) when `text/html` is strictly preferred.\n\n"
        "Every payment has a receipt whatever its status. For a FAILED or PENDING payment "
        "the answer is still 200 with that `status` and `charged: false`: nothing was "
        "collected, `net_amount` stays `amount − refunded_amount`, and the HTML page says "
        '"not charged" and shows an amount charged of 0.00.'
    ),
    responses={
        200: {
            "description": "The receipt",
            "content": {
                JSON: {},
                HTML: {"schema": {"type": "string"}, "example": "<!DOCTYPE html>..."},
            },
        },
        **problem_responses(404, 422, 500),
    },
)
async def get_receipt(
    payment_id: PaymentId,
    session: SessionDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header(description="`text/html` for the HTML page")] = None,
) -> Response:
    receipt = await receipt_service.get_receipt(
        session, payment_id, merchant_name=settings.merchant_name
    )
    if preferred_media_type(accept) == HTML:
        return HTMLResponse(
            render_receipt_html(receipt), headers={"Vary": "Accept", **HTML_HEADERS}
        )
    return MoneyJSONResponse(receipt, headers={"Vary": "Accept"})


@router.get(
    "/{payment_id}/receipt.html",
    operation_id="getReceiptHtml",
    response_class=HTMLResponse,
    summary="Get a payment's printable HTML receipt",
    description=(
        "The same page as `GET /v1/payments/{payment_id}/receipt` with `Accept: text/html`, "
        "as an operation of its own so that generated clients can fetch it."
    ),
    responses={
        200: {
            "description": "The receipt page",
            "content": {HTML: {"schema": {"type": "string"}, "example": "<!DOCTYPE html>..."}},
        },
        **problem_responses(404, 422, 500),
    },
)
async def get_receipt_html(
    payment_id: PaymentId, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    receipt = await receipt_service.get_receipt(
        session, payment_id, merchant_name=settings.merchant_name
    )
    return HTMLResponse(render_receipt_html(receipt), headers=HTML_HEADERS)
