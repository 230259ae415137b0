"""Where a payment or refund leaves PROCESSING (or PENDING), whoever learns the outcome.

The request itself, a same-key retry, the reconciler and a processor webhook all
finish rows through these two functions, each inside the caller's one transaction:
the row is locked, its status decides whether this caller is the one who moves it
(a second finisher changes nothing), and the event, the outbox message and the
stored idempotent answer are written with the move. The database refuses any
status change SPEC §3a does not list (trigger `payments_status_transition`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.auth.caller import current_actor
from payment_service.clients.gateway import ChargeResult, RefundResult
from payment_service.db import RawReads
from payment_service.errors import PROBLEM_BASE
from payment_service.jsonutil import dumps
from payment_service.models import Payment, Refund
from payment_service.models.enums import PaymentStatus, RefundStatus
from payment_service.observability import (
    LEDGER_JOURNALS,
    PAYMENT_AMOUNT,
    PAYMENTS,
    PAYMENTS_BY_KIND,
    REFUND_AMOUNT,
    REFUNDS,
    current_request_id,
)
from payment_service.repositories.charge_finish import finish_processing_charge
from payment_service.repositories.idempotency import IdempotencyRepository
from payment_service.repositories.outbox import OutboxRepository
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.payment import payment_dict
from payment_service.services.ledger import capture_journal, post_capture, post_refund
from payment_service.tracing import current_traceparent

log = logging.getLogger(__name__)

CHARGE_STATUS_CODES = {
    PaymentStatus.SUCCESS.value: 201,
    PaymentStatus.PENDING.value: 202,
    PaymentStatus.FAILED.value: 202,
}
# The idempotency operation and the outbox message type of each kind of payment.
KIND_OPERATIONS = {
    "FARE": "charge",
    "CANCELLATION_FEE": "charge",
    "TIP": "tip",
    "ADJUSTMENT": "adjustment",
}
KIND_MESSAGE_TYPES = {
    "FARE": "payment",
    "CANCELLATION_FEE": "cancellation_fee",
    "TIP": "tip",
    "ADJUSTMENT": "adjustment",
}
# Where each outcome may come from (the database trigger enforces the same).
_CHARGE_SOURCES = {
    PaymentStatus.SUCCESS.value: (PaymentStatus.PROCESSING.value, PaymentStatus.PENDING.value),
    PaymentStatus.FAILED.value: (PaymentStatus.PROCESSING.value, PaymentStatus.PENDING.value),
    PaymentStatus.PENDING.value: (PaymentStatus.PROCESSING.value,),
}
_MESSAGES = {
    PaymentStatus.SUCCESS.value: "Payment successful",
    PaymentStatus.PENDING.value: "Payment is pending confirmation by the provider",
    PaymentStatus.FAILED.value: "Payment declined by the provider",
    PaymentStatus.PROCESSING.value: "Payment is being processed",
    PaymentStatus.PARTIALLY_REFUNDED.value: "Payment successful",
    PaymentStatus.REFUNDED.value: "Payment successful",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer rendered from a stored row: the caller's and the replayed one."""

    status_code: int
    body: bytes


def charge_answer(payment: Payment, message: str | None = None) -> Answer:
    """201 for SUCCESS (and anything refunded since), 202 for PENDING and FAILED."""
    body = payment_dict(payment) | {"message": message or _MESSAGES[payment.status]}
    return Answer(CHARGE_STATUS_CODES.get(payment.status, 201), dumps(body))


async def finish_charge(
    session: AsyncSession, payment_id: int, result: ChargeResult, *, source: str
) -> tuple[Payment, bool]:
    """Record the processor's answer for a payment; (payment, whether we moved it).

    `source` (request, retry, reconciler, webhook) goes into the event for the audit.
    """
    repo = PaymentRepository(session)
    payment = await repo.get_for_update(payment_id)
    if payment is None:
        raise LookupError(f"payment {payment_id} does not exist")
    target = result.status.value
    if payment.status not in _CHARGE_SOURCES.get(target, ()):
        return payment, False
    previous = payment.status
    moved = await repo.finish_charge(
        payment_id,
        from_statuses=(previous,),
        status=target,
        gateway_reference=result.gateway_reference,
        failure_reason=result.failure_reason,
    )
    assert moved is not None  # the row is locked and was in `previous`
    await repo.append_event(
        payment_id,
        f"CHARGE_{target}",
        from_status=previous,
        to_status=target,
        amount=moved.amount,
        data=_charge_event_data(moved, result, source),
        actor=_actor(source),
    )
    if target == PaymentStatus.SUCCESS.value:
        await post_capture(session, moved)  # the journal commits with the capture
    message = payment_message(moved)
    await OutboxRepository(session).enqueue(message["type"], payment_id, message)
    answer = charge_answer(moved, result.message)
    await IdempotencyRepository(session).complete_bound(
        operation=KIND_OPERATIONS.get(moved.kind, "charge"),
        status=answer.status_code,
        body=answer.body.decode("utf-8"),
        payment_id=payment_id,
        refund_id=None,
    )
    _charge_finished(moved, previous, source)
    return moved, True


async def finish_held_charge(
    reads: RawReads, payment: Payment, result: ChargeResult, *, source: str
) -> tuple[Payment, Answer] | None:
    """`finish_charge` in one statement, for the caller holding tx 2's PROCESSING row.

    The new row, the answer and the journal are computed here from that row, then
    written in one statement, its own transaction (`repositories/charge_finish.py`): (the moved
    payment, its answer). None when another finisher moved the payment first:
    `finish_charge` then reads what that one recorded.
    """
    assert payment.status == PaymentStatus.PROCESSING.value
    target = result.status.value
    moved = Payment(
        **{column.key: getattr(payment, column.key) for column in Payment.__mapper__.column_attrs}
    )
    moved.status = target
    moved.gateway_reference = result.gateway_reference or payment.gateway_reference
    moved.failure_reason = result.failure_reason
    # The database's clock wrote created_at: never let updated_at come before it.
    moved.updated_at = max(datetime.now(UTC), payment.created_at)
    draft = capture_journal(moved) if target == PaymentStatus.SUCCESS.value else None
    message = payment_message(moved)
    answer = charge_answer(moved, result.message)
    finished = await finish_processing_charge(
        reads,
        payment_id=payment.id,
        status=target,
        gateway_reference=result.gateway_reference,
        failure_reason=result.failure_reason,
        updated_at=moved.updated_at,
        event_type=f"CHARGE_{target}",
        event_data=_charge_event_data(moved, result, source),
        actor=_actor(source) or current_actor(),
        journal=draft,
        message_type=message["type"],
        payload=message,
        traceparent=current_traceparent(),
        operation=KIND_OPERATIONS.get(moved.kind, "charge"),
        status_code=answer.status_code,
        body=answer.body.decode("utf-8"),
    )
    if not finished.moved:
        return None
    if finished.journal_posted and draft is not None:
        LEDGER_JOURNALS.labels(entry_type=draft.entry_type).inc()
    _charge_finished(moved, PaymentStatus.PROCESSING.value, source)
    return moved, answer


def _charge_event_data(moved: Payment, result: ChargeResult, source: str) -> dict[str, Any]:
    return {
        "message": result.message,
        "gateway_reference": moved.gateway_reference,
        "failure_reason": result.failure_reason,
        "source": source,
    }


def _charge_finished(moved: Payment, previous: str, source: str) -> None:
    """Metrics and the log line of a charge this caller moved."""
    PAYMENTS.labels(method=moved.method, status=moved.status).inc()
    PAYMENTS_BY_KIND.labels(kind=moved.kind, status=moved.status).inc()
    if moved.status == PaymentStatus.SUCCESS.value:
        PAYMENT_AMOUNT.observe(float(moved.amount))
    log.info(
        "charge finished",
        extra={"payment_id": moved.id, "status": moved.status, "from": previous, "source": source},
    )


def _actor(source: str) -> str | None:
    """Who moved the row: the calling client for requests, else the component itself."""
    return None if source in ("request", "retry") else source


def payment_message(payment: Payment) -> dict[str, Any]:
    """What the Notification service is told about a charge (a tip, adjustment, fee...)."""
    return {
        "type": KIND_MESSAGE_TYPES.get(payment.kind, "payment"),
        "kind": payment.kind,
        "parent_payment_id": payment.parent_payment_id,
        "event": f"payment.{payment.status.lower()}",
        "payment_id": payment.id,
        "trip_id": payment.trip_id,
        "rider_id": payment.rider_id,
        "driver_id": payment.driver_id,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "method": payment.method,
        "reference": payment.reference,
        "occurred_at": payment.created_at.isoformat(),
        "request_id": current_request_id(),
    }


def refund_answer(payment: Payment, refund: Refund) -> Answer:
    """200 when the processor confirmed, 202 while it is pending, 422 when it refused."""
    remaining = remaining_refundable(payment)
    if refund.status == RefundStatus.FAILED.value:
        problem = {
            "type": PROBLEM_BASE + "refund-declined",
            "title": "Refund Declined",
            "status": 422,
            "detail": (
                f"The payment processor declined refund {refund.id}; "
                f"{remaining} remains refundable."
            ),
            "refund_id": refund.id,
            "payment_id": payment.id,
            "refund_status": refund.status,
            "remaining_refundable": remaining,
        }
        return Answer(422, dumps(problem))
    body = {
        "refund_id": refund.id,
        "payment_id": payment.id,
        "refund_amount": refund.amount,
        "status": payment.status,
        "refund_status": refund.status,
        "remaining_refundable": remaining,
        "reason": refund.reason,
        "timestamp": refund.created_at,
    }
    code = 202 if refund.status == RefundStatus.PROCESSING.value else 200
    return Answer(code, dumps(body))


async def finish_refund(
    session: AsyncSession, refund_id: int, result: RefundResult, *, source: str
) -> tuple[Payment, Refund, bool]:
    """Record the processor's answer for a refund; (payment, refund, whether we moved it).

    A confirmed refund moves its reservation into `refunded_amount` (and the payment's
    status follows); a refused one gives its reservation back to what remains.
    """
    repo = PaymentRepository(session)
    refund = await repo.get_refund(refund_id)
    if refund is None:
        raise LookupError(f"refund {refund_id} does not exist")
    payment = await repo.get_for_update(refund.payment_id)
    assert payment is not None
    if result.status is RefundStatus.PROCESSING:
        if result.gateway_reference and refund.gateway_reference is None:
            await repo.finish_refund(
                refund_id,
                status=RefundStatus.PROCESSING.value,
                gateway_reference=result.gateway_reference,
                failure_reason=None,
            )
        return payment, refund, False
    finished = await repo.finish_refund(
        refund_id,
        status=result.status.value,
        gateway_reference=result.gateway_reference,
        failure_reason=result.failure_reason,
    )
    if finished is None:  # someone else finished it first
        await session.refresh(refund)
        return payment, refund, False
    previous = payment.status
    succeeded = result.status is RefundStatus.SUCCEEDED
    payment = await repo.settle_reservation(payment.id, finished.amount, refunded=succeeded)
    if succeeded:
        await post_refund(session, payment, finished)  # the journal commits with the refund
    await repo.append_event(
        payment.id,
        "REFUND" if succeeded else "REFUND_FAILED",
        from_status=previous,
        to_status=payment.status,
        amount=finished.amount,
        data={
            "refund_id": refund_id,
            "reason": finished.reason,
            "gateway_reference": finished.gateway_reference,
            "failure_reason": result.failure_reason,
            "source": source,
        },
    )
    message = refund_message(payment, finished)
    await OutboxRepository(session).enqueue(message["type"], payment.id, message)
    answer = refund_answer(payment, finished)
    await IdempotencyRepository(session).complete_bound(
        operation="adjustment" if finished.kind == "ADJUSTMENT" else "refund",
        status=answer.status_code,
        body=answer.body.decode("utf-8"),
        payment_id=payment.id,
        refund_id=refund_id,
    )
    if succeeded:
        REFUNDS.inc()
        REFUND_AMOUNT.inc(float(finished.amount))
    log.info(
        "refund finished",
        extra={"payment_id": payment.id, "refund_id": refund_id, "status": finished.status},
    )
    return payment, finished, True


def refund_message(payment: Payment, refund: Refund) -> dict[str, Any]:
    """What the Notification service is told about a refund (with the payment's new state)."""
    return {
        "type": "adjustment" if refund.kind == "ADJUSTMENT" else "refund",
        "event": (
            f"payment.{payment.status.lower()}"
            if refund.status == RefundStatus.SUCCEEDED.value
            else "refund.failed"
        ),
        "payment_id": payment.id,
        "refund_id": refund.id,
        "refund_status": refund.status,
        "trip_id": payment.trip_id,
        "rider_id": payment.rider_id,
        "driver_id": payment.driver_id,
        "status": payment.status,
        "amount": refund.amount,
        "payment_amount": payment.amount,
        "refunded_amount": payment.refunded_amount,
        "currency": payment.currency,
        "occurred_at": datetime.now(UTC).isoformat(),
        "request_id": current_request_id(),
    }


def remaining_refundable(payment: Payment) -> Decimal:
    """What may still be refunded: refunds still in flight at the processor count as spent."""
    return payment.amount - payment.refunded_amount - payment.refund_reserved
