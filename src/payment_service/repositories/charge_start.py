"""tx 2 of a charge in one statement: the PROCESSING payment, its first event, the key bound.

    WITH p AS (INSERT INTO payments ... ON CONFLICT (trip_id) WHERE status <> 'FAILED'
               DO NOTHING RETURNING payments.*),
         e AS (INSERT INTO payment_events ... SELECT ... FROM p),
         k AS (UPDATE idempotency_keys SET payment_id = (SELECT id FROM p)
               WHERE id = :key_id AND lease_token = :token AND EXISTS (SELECT id FROM p)
               RETURNING id)
    SELECT p.*, (SELECT count(*) FROM k) AS bound FROM p

Built once at import (bound parameters only), so no statement is compiled or
cache-keyed per request. No row: another live payment for the trip won the race (the
caller answers 409 and rolls back). `bound = 0`: the key's lease was taken over (the
caller raises and rolls back, so the payment and the event vanish with it). The event
and the key's binding are written only when the payment row was.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Numeric,
    String,
    Table,
    bindparam,
    exists,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import IdempotencyKey, Payment, PaymentEvent
from payment_service.models.payment import LIVE_TRIP_PREDICATE, Money

_PAYMENT_COLUMNS = (
    "trip_id",
    "rider_id",
    "driver_id",
    "currency",
    "method",
    "status",
    "reference",
    "gateway_idempotency_key",
    "metadata",
    "kind",
    "commission_rate",
    "trip_snapshot",
)
_TYPES: dict[str, Any] = {
    "trip_id": BigInteger(),
    "rider_id": BigInteger(),
    "driver_id": BigInteger(),
    "metadata": JSONB(),
    "trip_snapshot": JSONB(),
    "commission_rate": Numeric(5, 4),
}


def _build() -> Any:
    table = cast(Table, Payment.__table__)
    events = cast(Table, PaymentEvent.__table__)
    keys = cast(Table, IdempotencyKey.__table__)
    values = {name: bindparam(name, type_=_TYPES.get(name, String())) for name in _PAYMENT_COLUMNS}
    values["amount"] = bindparam("amount", type_=Money)
    payment = (
        insert(table)
        .values(values)
        .on_conflict_do_nothing(
            index_elements=[table.c.trip_id], index_where=text(LIVE_TRIP_PREDICATE)
        )
        .returning(*table.c)
        .cte("p")
    )
    event = (
        insert(events)
        .from_select(
            ["payment_id", "event_type", "from_status", "to_status", "amount", "data", "actor"],
            select(
                payment.c.id,
                bindparam("event_type", type_=String()),
                literal(None, String()),
                payment.c.status,
                payment.c.amount,
                bindparam("event_data", type_=JSONB()),
                bindparam("actor", type_=String()),
            ),
        )
        .returning(events.c.id)
        .cte("e")
    )
    key = (
        update(keys)
        .where(
            keys.c.id == bindparam("key_id", type_=BigInteger()),
            keys.c.lease_token == bindparam("token", type_=String()),
            exists(select(payment.c.id)),
        )
        .values(payment_id=select(payment.c.id).scalar_subquery())
        .returning(keys.c.id)
        .cte("k")
    )
    bound = select(func.count()).select_from(key).scalar_subquery().label("bound")
    # Referenced so SQLAlchemy renders `e` (it leaves out CTEs nothing selects from).
    written = select(func.count()).select_from(event).scalar_subquery().label("events")
    return select(*payment.c, bound, written)


_STATEMENT = _build()


@dataclass(frozen=True, slots=True)
class StartedCharge:
    payment: Payment
    bound: bool


async def start_charge(
    session: AsyncSession,
    *,
    key_id: int,
    token: str,
    event_type: str,
    event_data: dict[str, Any],
    actor: str | None,
    amount: Decimal,
    metadata: dict[str, Any],
    **values: Any,
) -> StartedCharge | None:
    """Insert the PROCESSING payment, its event and the key binding; None on a live twin."""
    params = {
        **values,
        "amount": amount,
        "metadata": metadata,
        "key_id": key_id,
        "token": token,
        "event_type": event_type,
        "event_data": event_data,
        "actor": actor,
    }
    row = (await session.execute(_STATEMENT, params)).mappings().one_or_none()
    if row is None:
        return None
    table = Payment.__table__
    payment = Payment(
        **{column.key: row[column.name] for column in table.c if column.key != "metadata"}
    )
    payment.metadata_ = row["metadata"]
    return StartedCharge(payment, bound=row["bound"] == 1)
