"""Refund endpoints: POST /v1/payments/{id}/refund and GET /v1/payments/{id}/refunds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from payment_service.api.payments import PaymentId
from payment_service.api.routing import MoneyRoute, idempotent_response
from payment_service.auth.guard import RequireRead, RequireRefund
from payment_service.dependencies import (
    CallerDep,
    GatewayDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
)
from payment_service.errors import problem_responses
from payment_service.jsonutil import MoneyJSONResponse
from payment_service.schemas.common import IdempotencyKeyHeader
from payment_service.schemas.refund import RefundList, RefundRequest, RefundResponse
from payment_service.services import refunds as refund_service
from payment_service.services.idempotency import resolve_key
from payment_service.services.transitions import remaining_refundable

router = APIRouter(prefix="/v1/payments", tags=["refunds"], route_class=MoneyRoute)


@router.post(
    "/{payment_id}/refund",
    operation_id="refundPayment",
    response_model=RefundResponse,
    summary="Refund a payment in part or in full (idempotent)",
    description=(
        "Without `amount`, refunds all that remains. Only SUCCESS and PARTIALLY_REFUNDED "
        "payments are refundable (else 409); an amount over what remains is a 422. "
        "200 when the processor confirmed the refund, 202 while it is pending there "
        "(`refund_status` PROCESSING), 422 `refund-declined` when it refused (the amount "
        "stays refundable)."
    ),
    responses={
        202: {"model": RefundResponse, "description": "Refund pending at the processor"},
        **problem_responses(400, 404, 409, 422, 429, 500, 503),
    },
    dependencies=[RequireRefund],
)
async def refund(
    payment_id: PaymentId,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    gateway: GatewayDep,
    caller: CallerDep,
    body: RefundRequest | None = None,
    idempotency_key: Annotated[IdempotencyKeyHeader | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    body = body or RefundRequest()
    key = resolve_key(body.idempotency_key, idempotency_key)
    service = refund_service.RefundService(
        settings=settings,
        session_factory=session_factory,
        gateway=gateway,
        client_id=caller.client_id,
    )
    outcome = await service.refund(payment_id, body, key)
    return idempotent_response(outcome)


@router.get(
    "/{payment_id}/refunds",
    operation_id="listRefunds",
    response_model=RefundList,
    summary="List a payment's refunds",
    responses=problem_responses(404, 422, 500),
    dependencies=[RequireRead],
)
async def list_refunds(payment_id: PaymentId, session: SessionDep) -> MoneyJSONResponse:
    payment, refunds = await refund_service.list_refunds(session, payment_id)
    return MoneyJSONResponse(
        {
            "payment_id": payment.id,
            "refunds": [
                {
                    "refund_id": r.id,
                    "payment_id": r.payment_id,
                    "amount": r.amount,
                    "status": r.status,
                    "reason": r.reason,
                    "created_at": r.created_at,
                }
                for r in refunds
            ],
            "count": len(refunds),
            "total_refunded": payment.refunded_amount,
            "remaining_refundable": remaining_refundable(payment),
        }
    )
