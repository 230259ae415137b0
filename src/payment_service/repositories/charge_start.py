"""tx 1 and tx 2 of a charge, one statement each, each its own transaction (`RawReads`:
the pooled connection's asyncpg connection, no BEGIN/COMMIT).

tx 2: the PROCESSING payment, its first event, the key bound to it:

    WITH lk AS (SELECT id FROM idempotency_keys WHERE id = :key_id AND lease_token = :token
                FOR UPDATE),
         p  AS (INSERT INTO payments ... SELECT ... WHERE EXISTS (SELECT id FROM lk)
                ON CONFLICT (trip_id) WHERE status <> 'FAILED' DO NOTHING RETURNING payments.*),
         e  AS (INSERT INTO payment_events ... SELECT ... FROM p),
         k  AS (UPDATE idempotency_keys SET payment_id = (SELECT id FROM p)
                WHERE id = (SELECT id FROM lk) AND EXISTS (SELECT id FROM p) RETURNING id)
    SELECT p.*, (SELECT count(*) FROM k) AS bound FROM p

One statement is one transaction: the payment exists only bound to the key whose lease
we hold (`lk` locks that row first, so no takeover can slip between the check and the
binding). No row: nothing was written, because another live payment for the trip won
the race (409) or our lease was taken over. Built once at import (bound parameters
only), so no statement is compiled or cache-keyed per request.

tx 1 (`claim_charge`) is below.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
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
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from payment_service.db import Positional, RawReads
from payment_service.jsonutil import json_text
from payment_service.models import IdempotencyKey, Payment, PaymentEvent
from payment_service.models.payment import LIVE_TRIP_PREDICATE, Money
from payment_service.repositories.idempotency import KeyRow

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
    # Our lease, row-locked first: nobody can take the key over before `k` binds it.
    lease = (
        select(keys.c.id)
        .where(
            keys.c.id == bindparam("key_id", type_=BigInteger()),
            keys.c.lease_token == bindparam("token", type_=String()),
        )
        .with_for_update()
        .cte("lk")
    )
    payment = (
        insert(table)
        .from_select(list(values), select(*values.values()).where(exists(select(lease.c.id))))
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
        .where(keys.c.id == select(lease.c.id).scalar_subquery(), exists(select(payment.c.id)))
        .values(payment_id=select(payment.c.id).scalar_subquery())
        .returning(keys.c.id)
        .cte("k")
    )
    bound = select(func.count()).select_from(key).scalar_subquery().label("bound")
    # Referenced so SQLAlchemy renders `e` (it leaves out CTEs nothing selects from).
    written = select(func.count()).select_from(event).scalar_subquery().label("events")
    return select(*payment.c, bound, written)


_STATEMENT = _build()
_COMPILED = _STATEMENT.compile(dialect=asyncpg_dialect())  # type: ignore[no-untyped-call]
_SQL = str(_COMPILED)
"""tx 2 as asyncpg takes it (`$n::TYPE` placeholders), compiled once at import."""
_NAMES: tuple[str, ...] = tuple(_COMPILED.positiontup or ())
# Binds with a value of their own (the event's literal NULL `from_status`).
_DEFAULTS = {name: bind.value for name, bind in _COMPILED.binds.items() if not bind.required}
_JSON_PARAMS = frozenset({"metadata", "trip_snapshot", "event_data"})


@dataclass(frozen=True, slots=True)
class StartedCharge:
    payment: Payment
    bound: bool


async def start_charge(
    reads: RawReads,
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
    """Insert the PROCESSING payment, its event and the key binding, in one statement (its
    own transaction); None when nothing was written: a live twin, or our lease was lost."""
    params = {
        **_DEFAULTS,
        **values,
        "amount": amount,
        "metadata": metadata,
        "key_id": key_id,
        "token": token,
        "event_type": event_type,
        "event_data": event_data,
        "actor": actor,
    }
    args = [json_text(params[name]) if name in _JSON_PARAMS else params[name] for name in _NAMES]
    row = await reads.fetchrow(_SQL, *args)
    if row is None:
        return None
    table = Payment.__table__
    payment = Payment(
        **{column.key: row[column.name] for column in table.c if column.key != "metadata"}
    )
    payment.metadata_ = row["metadata"]
    return StartedCharge(payment, bound=row["bound"] == 1)


# tx 1 in one statement: claim the key unless the trip already has a live payment, and
# read the key's row as it was before (a replay needs nothing else).
_CLAIM = Positional.of(
    f"""
WITH live AS (
    SELECT id, status FROM payments
     WHERE trip_id = CAST(:trip_id AS bigint) AND {LIVE_TRIP_PREDICATE}
     LIMIT 1
), claimed AS (
    INSERT INTO idempotency_keys
           (operation, client_id, key, fingerprint, state, lease_token, locked_until, expires_at)
    SELECT CAST(:operation AS varchar), CAST(:client_id AS varchar), CAST(:key AS varchar),
           CAST(:fingerprint AS varchar), 'IN_PROGRESS', CAST(:token AS varchar),
           now() + CAST(:lease AS interval), now() + CAST(:ttl AS interval)
     WHERE NOT EXISTS (SELECT 1 FROM live)
        ON CONFLICT ON CONSTRAINT uq_idempotency_keys_scope DO NOTHING
 RETURNING id
), existing AS (
    SELECT id, fingerprint, state, locked_until, expires_at, response_status, response_body,
           payment_id, refund_id
      FROM idempotency_keys
     WHERE operation = CAST(:operation AS varchar) AND client_id = CAST(:client_id AS varchar)
       AND key = CAST(:key AS varchar)
)
SELECT (SELECT id FROM claimed) AS claimed_id,
       (SELECT id FROM live) AS live_id,
       (SELECT status FROM live) AS live_status,
       existing.*,
       now() AS db_now
  FROM (SELECT 1) AS one LEFT JOIN existing ON true
"""
)


_KEY_ROW_FIELDS = tuple(field.name for field in fields(KeyRow))
"""`existing.*` and `db_now` of `_CLAIM` are exactly KeyRow's fields."""


@dataclass(frozen=True, slots=True)
class FirstClaim:
    """What tx 1's statement saw: our new key, the trip's live payment, the key's old row."""

    claimed_id: int | None
    live: tuple[int, str] | None
    existing: KeyRow | None


async def claim_charge(
    reads: RawReads,
    *,
    trip_id: int,
    operation: str,
    client_id: str,
    key: str,
    fingerprint: str,
    token: str,
    lease: timedelta,
    ttl: timedelta,
) -> FirstClaim:
    """Claim a fresh key for an unpaid trip in one round trip (see `_CLAIM`).

    `existing` is the key's row from before this statement (it cannot see the row it
    inserted itself), so a finished key's answer comes back in the same round trip.
    """
    row = await reads.fetchrow(
        _CLAIM.sql,
        *_CLAIM.args(
            {
                "trip_id": trip_id,
                "operation": operation,
                "client_id": client_id,
                "key": key,
                "fingerprint": fingerprint,
                "token": token,
                "lease": lease,
                "ttl": ttl,
            }
        ),
    )
    existing = None if row["id"] is None else KeyRow(**{f: row[f] for f in _KEY_ROW_FIELDS})
    live = None if row["live_id"] is None else (row["live_id"], row["live_status"])
    return FirstClaim(row["claimed_id"], live, existing)
