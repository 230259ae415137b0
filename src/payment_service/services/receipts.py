"""Receipts: the data of a payment's receipt, issued once so its number never changes.

The receipt number is derived from the payment (`RN-<yyyymmdd of the payment, UTC>-
<payment id zero-padded to 8>`), so it is unique by construction, and it is stored
in `receipts` on first request through `PaymentRepository.get_or_issue_receipt`
(INSERT .. ON CONFLICT DO NOTHING, then SELECT): concurrent first requests agree on
one row and one `issued_at`. The row commits with the request's unit of work.

A receipt exists for every payment, whatever its status: a FAILED or PENDING
payment gets one too, with `charged: false` so nobody reads it as proof of payment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import Payment, PaymentEvent
from payment_service.models.enums import PaymentStatus
from payment_service.repositories.payment import PaymentRepository
from payment_service.schemas.payment import payment_dict
from payment_service.services.payments import PaymentNotFoundError

RECEIPT_ID_PREFIX = "RCP-"
CENT = Decimal("0.01")

# Statuses under which money was actually collected from the rider.
CHARGED_STATUSES = frozenset(
    {PaymentStatus.SUCCESS, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)


def receipt_number_for(payment: Payment) -> str:
    """`RN-20240226-00000008`: the payment's UTC date and its zero-padded id."""
    return f"RN-{payment.created_at.astimezone(UTC):%Y%m%d}-{payment.id:08d}"


async def get_receipt(
    session: AsyncSession,
    payment_id: int,
    *,
    now: datetime | None = None,
    merchant_name: str | None = None,
) -> dict[str, Any]:
    """The receipt of a payment as a dict (Decimals exact, datetimes aware), issuing it once.

    Raises `PaymentNotFoundError` for an unknown payment.
    """
    repo = PaymentRepository(session)
    payment = await repo.get(payment_id)
    if payment is None:
        raise PaymentNotFoundError(payment_id)
    receipt = await repo.get_or_issue_receipt(payment, receipt_number_for(payment))
    refunds = await repo.refunds_of(payment_id)
    return {
        "receipt_id": RECEIPT_ID_PREFIX + payment.reference,
        "receipt_number": receipt.receipt_number,
        **payment_dict(payment),
        "refunds": [
            {
                "refund_id": refund.id,
                "amount": refund.amount,
                "reason": refund.reason,
                "created_at": refund.created_at,
            }
            for refund in refunds
        ],
        "net_amount": payment.amount - payment.refunded_amount,
        "charged": payment.status in CHARGED_STATUSES,
        "issued_at": receipt.issued_at,
        "generated_at": now or datetime.now(UTC),
        **await _ride_details(session, payment, merchant_name),
    }


async def _ride_details(
    session: AsyncSession, payment: Payment, merchant_name: str | None
) -> dict[str, Any]:
    """What a rider keeps (issue 12): the merchant, the trip as the charge saw it, the fare
    breakdown, and the fare payment's tips and adjustments (none for other kinds)."""
    snapshot = payment.trip_snapshot or {}
    tips: list[dict[str, Any]] = []
    adjustments: list[dict[str, Any]] = []
    if (payment.kind or "FARE") == "FARE":
        children = await session.execute(
            select(Payment).where(Payment.parent_payment_id == payment.id).order_by(Payment.id)
        )
        for child in children.scalars():
            if child.kind == "TIP":
                tips.append(
                    {
                        "payment_id": child.id,
                        "amount": child.amount,
                        "status": child.status,
                        "refunded_amount": child.refunded_amount,
                        "created_at": child.created_at,
                    }
                )
        events = await session.execute(
            select(PaymentEvent)
            .where(
                PaymentEvent.payment_id == payment.id, PaymentEvent.event_type == "FARE_ADJUSTED"
            )
            .order_by(PaymentEvent.id)
        )
        statuses = {
            row.id: row.status
            for row in (
                await session.execute(
                    select(Payment.id, Payment.status).where(
                        Payment.parent_payment_id == payment.id
                    )
                )
            ).all()
        }
        for event in events.scalars():
            data = event.data or {}
            child_id = data.get("adjustment_payment_id")
            adjustments.append(
                {
                    "old_fare": Decimal(data["old_fare"]),
                    "new_fare": Decimal(data["new_fare"]),
                    "reason": data.get("reason"),
                    "adjustment_payment_id": child_id,
                    "refund_id": data.get("refund_id"),
                    "status": statuses.get(child_id) if child_id else None,
                    "created_at": event.created_at,
                }
            )
    charged_tips = sum(
        (t["amount"] - t["refunded_amount"] for t in tips if t["status"] in CHARGED_STATUSES),
        Decimal("0.00"),
    )
    trip = {
        key: snapshot.get(key)
        for key in ("pickup_zone", "drop_zone", "distance_km", "started_at", "ended_at")
    }
    trip["distance_km"] = _decimal(trip["distance_km"])
    return {
        "merchant_name": merchant_name,
        "trip": trip if snapshot else None,
        "fare_breakdown": fare_breakdown(snapshot, payment),
        "tips": tips,
        "adjustments": adjustments,
        "tips_total": charged_tips,
    }


def _decimal(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def fare_breakdown(snapshot: dict[str, Any], payment: Payment) -> dict[str, Any] | None:
    """Base, distance and surge parts of the charged fare (they add up to it, to the cent).

    distance = fare / surge - base, surge = the rest; None when the trip said too little.
    """
    if (payment.kind or "FARE") == "CANCELLATION_FEE":
        return {"cancellation_fee": payment.amount, "total": payment.amount}
    base = _decimal(snapshot.get("base_fare"))
    surge = _decimal(snapshot.get("surge_multiplier")) or Decimal("1")
    if base is None or surge <= 0 or (payment.kind or "FARE") != "FARE":
        return None
    total = payment.amount
    before_surge = (total / surge).quantize(CENT, rounding=ROUND_HALF_UP)
    distance = max(before_surge - base, Decimal("0.00"))
    return {
        "base": base.quantize(CENT),
        "distance": distance,
        "surge": total - base.quantize(CENT) - distance,
        "surge_multiplier": surge,
        "total": total,
    }
