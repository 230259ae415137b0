"""Payment endpoints (seed API paths under /v1/payments)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from payment_service.api.routing import MoneyRoute
from payment_service.auth.guard import RequireRead
from payment_service.errors import problem_responses
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.repositories.payment import PaymentQuery
from payment_service.schemas.payment import (
    MAX_ID,
    PaymentFilters,
    PaymentList,
    PaymentRead,
    payment_row_dict,
)
from payment_service.services import payments as payment_service

router = APIRouter(
    prefix="/v1/payments", tags=["payments"], route_class=MoneyRoute, dependencies=[RequireRead]
)

PaymentId = Annotated[int, Path(gt=0, le=MAX_ID, description="Payment id", examples=[1])]


@router.get(
    "",
    operation_id="listPayments",
    response_model=PaymentList,
    summary="List payments, newest first",
    responses=problem_responses(422, 500),
)
async def list_payments(
    request: Request, filters: Annotated[PaymentFilters, Query()]
) -> MoneyJSONResponse:
    query = PaymentQuery(
        trip_id=filters.trip_id,
        status=filters.status.value if filters.status else None,
        method=filters.method.value if filters.method else None,
        rider_id=filters.rider_id,
        driver_id=filters.driver_id,
        limit=filters.limit,
        offset=filters.offset,
    )
    rows, total = await payment_service.search_payments(request.app.state.reads, query)
    return MoneyJSONResponse(
        {
            "payments": [payment_row_dict(row) for row in rows],
            "count": len(rows),
            "total": total,
            "limit": filters.limit,
            "offset": filters.offset,
        }
    )


@router.get(
    "/{payment_id}",
    operation_id="getPayment",
    response_model=PaymentRead,
    summary="Get one payment",
    responses=problem_responses(404, 422, 500),
)
async def get_payment(request: Request, payment_id: PaymentId) -> MoneyJSONResponse:
    row = await payment_service.read_payment(request.app.state.reads, payment_id)
    return MoneyJSONResponse(payment_row_dict(row))
