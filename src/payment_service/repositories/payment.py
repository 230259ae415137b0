"""Queries over payments, refunds, receipts and payment events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.db import RawReads
from payment_service.models import Payment, PaymentEvent, Receipt, Refund
from payment_service.models.enums import PaymentStatus, RefundStatus
from payment_service.models.payment import TRIP_PAYMENT_KINDS

UNSETTLED = (PaymentStatus.PROCESSING.value, PaymentStatus.PENDING.value)


@dataclass(frozen=True, slots=True)
class PaymentQuery:
    trip_id: int | None = None
    status: str | None = None
    method: str | None = None
    rider_id: int | None = None
    driver_id: int | None = None
    limit: int = 100
    offset: int = 0


_FILTERS = ("trip_id", "status", "method", "rider_id", "driver_id")

# The read routes' SQL, run on asyncpg through `RawReads` (no ORM objects, no
# transaction): the columns of a payment's JSON object, by their database names.
_READ_COLUMNS = (
    "id, trip_id, rider_id, driver_id, amount, currency, method, status, refunded_amount,"
    " reference, created_at, updated_at, kind, parent_payment_id"
)
_READ_BY_ID = f"SELECT {_READ_COLUMNS} FROM payments WHERE id = $1"


@cache
def _search_sql(present: tuple[str, ...]) -> str:
    """One page and the total matching the filters in one statement, for one combination
    of filters (at most 32), built once. The count is the outer row, so an empty page
    (an offset past the end) still says how many match: its one row has no payment."""
    where = " AND ".join(f"{name} = ${n}" for n, name in enumerate(present, 1)) or "true"
    limit, offset = len(present) + 1, len(present) + 2
    return (
        f"SELECT total.n AS total, page.* FROM"
        f" (SELECT count(*) AS n FROM payments WHERE {where}) AS total"
        f" LEFT JOIN LATERAL (SELECT {_READ_COLUMNS} FROM payments WHERE {where}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${limit} OFFSET ${offset}) AS page ON true"
        " ORDER BY page.created_at DESC, page.id DESC"
    )


class PaymentReads:
    """The read routes' queries: one round trip each, rows as asyncpg Records."""

    def __init__(self, reads: RawReads) -> None:
        self.reads = reads

    async def by_id(self, payment_id: int) -> Any:
        """The payment's row, or None."""
        return await self.reads.fetchrow(_READ_BY_ID, payment_id)

    async def search(self, query: PaymentQuery) -> tuple[list[Any], int]:
        """One page, newest first (ties by id), plus the total matching the filters."""
        present = tuple(name for name in _FILTERS if getattr(query, name) is not None)
        args = [getattr(query, name) for name in present]
        rows = await self.reads.fetch(_search_sql(present), *args, query.limit, query.offset)
        total = rows[0]["total"] if rows else 0
        return [row for row in rows if row["id"] is not None], total


class PaymentRepository:
    """Payments and what hangs off them, for one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, payment_id: int) -> Payment | None:
        return await self.session.get(Payment, payment_id)

    async def get_many(self, payment_ids: set[int]) -> dict[int, Payment]:
        """Payments by id, in one query."""
        if not payment_ids:
            return {}
        rows = await self.session.execute(select(Payment).where(Payment.id.in_(payment_ids)))
        return {payment.id: payment for payment in rows.scalars()}

    async def get_for_update(self, payment_id: int) -> Payment | None:
        """Row-lock the payment until the transaction ends (serialises refunds)."""
        result = await self.session.execute(
            select(Payment)
            .where(Payment.id == payment_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def find_live_for_trip(self, trip_id: int) -> tuple[int, str] | None:
        """(id, status) of the trip's live (not FAILED) fare or fee payment, if any."""
        row = (
            await self.session.execute(
                select(Payment.id, Payment.status)
                .where(
                    Payment.trip_id == trip_id,
                    Payment.status != PaymentStatus.FAILED.value,
                    Payment.kind.in_(TRIP_PAYMENT_KINDS),
                )
                .limit(1)
            )
        ).one_or_none()
        return (row.id, row.status) if row else None

    async def append_event(
        self,
        payment_id: int,
        event_type: str,
        *,
        from_status: str | None,
        to_status: str,
        amount: Decimal | None,
        data: dict[str, Any],
        actor: str | None = None,
    ) -> None:
        """Append to the payment's history (the table refuses updates and deletes).

        `actor` defaults to the calling client (`current_actor()`, the model's default);
        work no client asked for names itself (`reconciler`, `webhook:stripe`).
        """
        values: dict[str, Any] = {
            "payment_id": payment_id,
            "event_type": event_type,
            "from_status": from_status,
            "to_status": to_status,
            "amount": amount,
            "data": data,
        }
        if actor is not None:
            values["actor"] = actor
        await self.session.execute(insert(PaymentEvent).values(**values))

    async def finish_charge(
        self,
        payment_id: int,
        *,
        from_statuses: tuple[str, ...],
        status: str,
        gateway_reference: str | None,
        failure_reason: str | None,
    ) -> Payment | None:
        """The guarded move out of PROCESSING (or PENDING): None when another path
        (a retry, the reconciler, a webhook) already moved it, so it happens once."""
        statement = (
            update(Payment)
            .where(Payment.id == payment_id, Payment.status.in_(from_statuses))
            .values(
                status=status,
                gateway_reference=func.coalesce(gateway_reference, Payment.gateway_reference),
                failure_reason=failure_reason,
                updated_at=func.now(),
            )
            .returning(Payment)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def reserve_refund(
        self,
        payment_id: int,
        *,
        amount: Decimal,
        reason: str | None,
        gateway_key: str,
        kind: str = "REFUND",
    ) -> Refund:
        """A PROCESSING refund and its reservation on the payment (row locked by the caller).

        `ck_payments_refunds_in_flight_within_amount` refuses a reservation past the amount.
        """
        refund = (
            await self.session.execute(
                insert(Refund)
                .values(
                    payment_id=payment_id,
                    amount=amount,
                    reason=reason,
                    status=RefundStatus.PROCESSING.value,
                    gateway_idempotency_key=gateway_key,
                    kind=kind,
                )
                .returning(Refund)
            )
        ).scalar_one()
        await self.session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(refund_reserved=Payment.refund_reserved + amount, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
        return refund

    async def get_refund(self, refund_id: int) -> Refund | None:
        return await self.session.get(Refund, refund_id)

    async def finish_refund(
        self,
        refund_id: int,
        *,
        status: str,
        gateway_reference: str | None,
        failure_reason: str | None,
    ) -> Refund | None:
        """The guarded move out of PROCESSING; None when it was already finished."""
        statement = (
            update(Refund)
            .where(Refund.id == refund_id, Refund.status == RefundStatus.PROCESSING.value)
            .values(
                status=status,
                gateway_reference=func.coalesce(gateway_reference, Refund.gateway_reference),
                failure_reason=failure_reason,
                updated_at=func.now(),
            )
            .returning(Refund)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def settle_reservation(
        self, payment_id: int, amount: Decimal, *, refunded: bool
    ) -> Payment:
        """Release a finished refund's reservation; a confirmed one moves to `refunded_amount`
        and the status follows (the deferred triggers of 0003/0005 check the sums)."""
        added = amount if refunded else Decimal("0")
        new_total = Payment.refunded_amount + added
        status = (
            case(
                (new_total == Payment.amount, PaymentStatus.REFUNDED.value),
                else_=PaymentStatus.PARTIALLY_REFUNDED.value,
            )
            if refunded
            else Payment.status
        )
        statement = (
            update(Payment)
            .where(Payment.id == payment_id)
            .values(
                refund_reserved=Payment.refund_reserved - amount,
                refunded_amount=new_total,
                status=status,
                updated_at=func.now(),
            )
            .returning(Payment)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one()

    async def unsettled_payments(self, *, older_than: float, limit: int) -> list[Payment]:
        """PROCESSING/PENDING payments untouched for `older_than` seconds, leased to us.

        `FOR UPDATE SKIP LOCKED` keeps replicas on disjoint rows; bumping `updated_at`
        hides the rows from the others until `older_than` passes again.
        """
        picked = (
            select(Payment.id)
            .where(
                Payment.status.in_(UNSETTLED),
                # Seeded history never reached a processor: nothing to ask about.
                Payment.gateway_idempotency_key.is_not(None),
                Payment.updated_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than),
            )
            .order_by(Payment.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(Payment)
            .where(Payment.id.in_(picked))
            .values(updated_at=func.now())
            .returning(Payment)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def unsettled_refunds(self, *, older_than: float, limit: int) -> list[Refund]:
        """PROCESSING refunds untouched for `older_than` seconds, leased like payments."""
        picked = (
            select(Refund.id)
            .where(
                Refund.status == RefundStatus.PROCESSING.value,
                Refund.updated_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than),
            )
            .order_by(Refund.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(Refund)
            .where(Refund.id.in_(picked))
            .values(updated_at=func.now())
            .returning(Refund)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def refunds_of(self, payment_id: int) -> Sequence[Refund]:
        result = await self.session.execute(
            select(Refund).where(Refund.payment_id == payment_id).order_by(Refund.id)
        )
        return result.scalars().all()

    async def get_or_issue_receipt(self, payment: Payment, number: str) -> Receipt:
        """Issue the receipt once; later calls (even concurrent ones) get the same row.

        Reads first, so the usual request (a receipt already issued) writes nothing.
        """
        existing = select(Receipt).where(Receipt.payment_id == payment.id)
        receipt = (await self.session.execute(existing)).scalar_one_or_none()
        if receipt is not None:
            return receipt
        issued = await self.session.execute(
            insert(Receipt)
            .values(payment_id=payment.id, receipt_number=number)
            # No arbiter: a racing twin may collide on receipt_number's unique index before
            # payment_id's (the number is derived from the payment, so it is the same row).
            .on_conflict_do_nothing()
            .returning(Receipt)
        )
        receipt = issued.scalar_one_or_none()
        if receipt is None:  # a concurrent first request issued it a moment ago
            receipt = (await self.session.execute(existing)).scalar_one()
        return receipt
