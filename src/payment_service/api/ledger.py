"""Reading the ledger: GET /v1/trips/{id}/ledger and GET /v1/drivers/{id}/earnings."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from payment_service.api.routing import MoneyRoute
from payment_service.auth.guard import RequireRead
from payment_service.dependencies import SessionDep
from payment_service.errors import UnprocessableError, problem_responses
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.repositories.ledger import EARNING_FIGURES, LedgerRepository
from payment_service.schemas.ledger import DriverEarnings, TripLedger
from payment_service.schemas.payment import MAX_ID

router = APIRouter(tags=["ledger"], route_class=MoneyRoute, dependencies=[RequireRead])

Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip")]


@router.get(
    "/v1/trips/{trip_id}/ledger",
    operation_id="getTripLedger",
    response_model=TripLedger,
    summary="Every ledger journal of a trip, with its lines",
    description=(
        "One journal per money movement of the trip (captures of its fare, tips, "
        "adjustments or fee, and refunds), oldest first; each journal's lines sum to zero."
    ),
    responses=problem_responses(401, 403, 422, 429, 500, 503),
)
async def trip_ledger(
    trip_id: Annotated[int, Path(gt=0, le=MAX_ID)],
    session: SessionDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> MoneyJSONResponse:
    journals, total = await LedgerRepository(session).trip_journals(
        trip_id, limit=limit, offset=offset
    )
    entries = [
        {
            "journal_id": item.journal.id,
            "entry_type": item.journal.entry_type,
            "payment_kind": item.journal.payment_kind,
            "payment_id": item.journal.payment_id,
            "refund_id": item.journal.refund_id,
            "trip_id": item.journal.trip_id,
            "driver_id": item.journal.driver_id,
            "rider_id": item.journal.rider_id,
            "amount": item.journal.amount,
            "description": item.journal.description,
            "created_at": item.journal.created_at,
            "lines": [{"account": line.account, "amount": line.amount} for line in item.lines],
        }
        for item in journals
    ]
    return MoneyJSONResponse(
        {
            "trip_id": trip_id,
            "entries": entries,
            "count": len(entries),
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@router.get(
    "/v1/drivers/{driver_id}/earnings",
    operation_id="getDriverEarnings",
    response_model=DriverEarnings,
    summary="A driver's earnings by UTC day, from the ledger",
    description=(
        "Gross fares (and cancellation fees), upward adjustments, tips, refunds, the "
        "platform's commission (net of reversals) and the driver's net, per UTC day in "
        "`from`..`to` (inclusive, both optional); `totals` cover the whole range, `days` "
        "is paginated."
    ),
    responses=problem_responses(401, 403, 422, 429, 500, 503),
)
async def driver_earnings(
    driver_id: Annotated[int, Path(gt=0, le=MAX_ID)],
    session: SessionDep,
    date_from: Annotated[date | None, Query(alias="from", description="First UTC day")] = None,
    date_to: Annotated[date | None, Query(alias="to", description="Last UTC day")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> MoneyJSONResponse:
    if date_from is not None and date_to is not None and date_from > date_to:
        raise UnprocessableError(
            "`from` must not be after `to`.",
            errors=[{"field": "from", "message": "after `to`"}],
        )
    days = await LedgerRepository(session).driver_days(
        driver_id, day_from=date_from, day_to=date_to
    )
    return MoneyJSONResponse(earnings_body(driver_id, days, date_from, date_to, limit, offset))


def earnings_body(
    driver_id: int,
    days: list[dict[str, Any]],
    date_from: date | None,
    date_to: date | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    totals = {
        name: sum((Decimal(day[name]) for day in days), Decimal("0.00")) for name in EARNING_FIGURES
    }
    page = days[offset : offset + limit]
    return {
        "driver_id": driver_id,
        "date_from": date_from,
        "date_to": date_to,
        "totals": totals,
        "days": [
            {"day": day["day"], "entries": day["entries"]}
            | {name: Decimal(day[name]) for name in EARNING_FIGURES}
            for day in page
        ],
        "count": len(page),
        "total": len(days),
        "limit": limit,
        "offset": offset,
    }
