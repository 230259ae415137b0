"""Migrations: up and down on an empty database, agreement with the models, DB-enforced rules."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from payment_service.migrations import downgrade, upgrade
from payment_service.models import Base
from payment_service.services.health import expected_revision
from tests.conftest import admin_sql

EXPECTED_TABLES = {
    "payments",
    "refunds",
    "receipts",
    "payment_events",
    "idempotency_keys",
    "notification_outbox",
    "gateway_events",
    "api_clients",
    "api_keys",
    "ledger_journals",
    "ledger_lines",
}


@pytest.fixture
async def throwaway_url(server_url: URL) -> AsyncIterator[URL]:
    """An empty database of this test's own, dropped afterwards (the session DB is untouched)."""
    name = f"payment_mig_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield server_url.set(database=name)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _schema(url: URL) -> tuple[set[str], list[str], set[str]]:
    """(tables in public, alembic_version rows, our plpgsql functions) of a database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            tables = set(
                (
                    await connection.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).scalars()
            )
            versions: list[str] = []
            if "alembic_version" in tables:
                versions = list(
                    (
                        await connection.execute(text("SELECT version_num FROM alembic_version"))
                    ).scalars()
                )
            functions = set(
                (
                    await connection.execute(
                        text(
                            "SELECT proname FROM pg_proc p JOIN pg_namespace n "
                            "ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    return tables, versions, functions


async def test_upgrade_head_on_empty_database_creates_every_table(throwaway_url: URL) -> None:
    """`upgrade head` on an empty database creates all tables and records the head revision."""
    await upgrade(throwaway_url)

    tables, versions, functions = await _schema(throwaway_url)
    assert tables - {"alembic_version"} == EXPECTED_TABLES
    assert versions == [expected_revision()]
    assert "payment_events_reject_change" in functions


async def test_downgrade_base_leaves_no_tables_and_upgrade_works_again(
    throwaway_url: URL,
) -> None:
    """`downgrade base` removes every table and function; a second `upgrade head` works."""
    await upgrade(throwaway_url)

    await downgrade(throwaway_url, "base")

    tables, versions, functions = await _schema(throwaway_url)
    assert tables - {"alembic_version"} == set()
    assert versions == []
    assert functions == set()

    await upgrade(throwaway_url)

    tables, versions, _ = await _schema(throwaway_url)
    assert tables - {"alembic_version"} == EXPECTED_TABLES
    assert versions == [expected_revision()]


def _model_diffs(sync_connection: Any) -> list[Any]:
    """Alembic autogenerate's differences between `Base.metadata` and the database."""
    context = MigrationContext.configure(sync_connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


async def test_models_and_migration_agree(engine: AsyncEngine) -> None:
    """Autogenerate finds no difference between the models and the migrated database."""
    async with engine.connect() as connection:
        diffs = await connection.run_sync(_model_diffs)

    assert diffs == []


async def test_model_comparison_detects_a_drifted_schema(throwaway_url: URL) -> None:
    """The comparison is not vacuous: a dropped index and column show up as differences."""
    await upgrade(throwaway_url)
    await admin_sql(throwaway_url, "DROP INDEX ix_payments_status")
    await admin_sql(throwaway_url, "ALTER TABLE refunds DROP COLUMN reason")
    engine = create_async_engine(throwaway_url)
    try:
        async with engine.connect() as connection:
            diffs = await connection.run_sync(_model_diffs)
    finally:
        await engine.dispose()

    found = {
        (diff[0], diff[1].name if diff[0] == "add_index" else f"{diff[2]}.{diff[3].name}")
        for diff in diffs
    }
    assert found == {("add_index", "ix_payments_status"), ("add_column", "refunds.reason")}


# --- invariants enforced by the database (each test rolls its transaction back) ---


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection to the migrated session database inside a transaction that is rolled back."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


def _trip_id() -> int:
    """A trip id no seed row or other test uses."""
    return 5_000_000_000 + uuid.uuid4().int % 1_000_000_000


async def _insert_payment(connection: AsyncConnection, **values: Any) -> int:
    row: dict[str, Any] = {
        "trip_id": _trip_id(),
        "amount": "10.00",
        "method": "CARD",
        "status": "SUCCESS",
        "refunded_amount": "0",
        "reference": f"T-{uuid.uuid4().hex[:20]}",
    }
    row.update(values)
    result = await connection.execute(
        text(
            "INSERT INTO payments (trip_id, amount, method, status, refunded_amount, reference) "
            "VALUES (:trip_id, CAST(:amount AS numeric), :method, :status, "
            "CAST(:refunded_amount AS numeric), :reference) RETURNING id"
        ),
        row,
    )
    return result.scalar_one()


async def test_second_live_payment_for_a_trip_is_rejected(db: AsyncConnection) -> None:
    """Two payments that are not FAILED for one trip violate uq_payments_live_trip."""
    trip = _trip_id()
    await _insert_payment(db, trip_id=trip, status="PENDING")

    with pytest.raises(IntegrityError, match="uq_payments_live_trip"):
        await _insert_payment(db, trip_id=trip, status="SUCCESS")


async def test_failed_and_then_successful_payment_for_one_trip_is_allowed(
    db: AsyncConnection,
) -> None:
    """A FAILED payment does not count as live: a SUCCESS for the same trip is accepted."""
    trip = _trip_id()
    await _insert_payment(db, trip_id=trip, status="FAILED")
    await _insert_payment(db, trip_id=trip, status="FAILED")
    await _insert_payment(db, trip_id=trip, status="SUCCESS")

    count = await db.scalar(
        text("SELECT count(*) FROM payments WHERE trip_id = :trip"), {"trip": trip}
    )
    assert count == 3


async def test_refunded_amount_above_amount_is_rejected(db: AsyncConnection) -> None:
    """refunded_amount > amount violates the CHECK constraint."""
    with pytest.raises(IntegrityError, match="ck_payments_refund_within_amount"):
        await _insert_payment(db, amount="10.00", refunded_amount="10.01", status="REFUNDED")


async def test_refund_update_past_amount_is_rejected(db: AsyncConnection) -> None:
    """An UPDATE raising refunded_amount past the amount is refused too."""
    payment_id = await _insert_payment(db, amount="10.00")

    with pytest.raises(IntegrityError, match="ck_payments_refund_within_amount"):
        await db.execute(
            text("UPDATE payments SET refunded_amount = 10.01, status = 'REFUNDED' WHERE id = :id"),
            {"id": payment_id},
        )


@pytest.mark.parametrize(
    ("status", "refunded", "constraint"),
    [
        ("SUCCESS", "1.00", "ck_payments_refund_status_matches_amount"),
        ("REFUNDED", "0", "ck_payments_refund_status_matches_amount"),
        ("REFUNDED", "4.00", "ck_payments_refunded_means_all"),
        ("PARTIALLY_REFUNDED", "10.00", "ck_payments_partially_refunded_means_some"),
    ],
)
async def test_status_must_match_the_refunded_amount(
    db: AsyncConnection, status: str, refunded: str, constraint: str
) -> None:
    """REFUNDED means all, PARTIALLY_REFUNDED some, any other status nothing refunded."""
    with pytest.raises(IntegrityError, match=constraint):
        await _insert_payment(db, amount="10.00", refunded_amount=refunded, status=status)


async def test_consistent_refund_states_are_accepted(db: AsyncConnection) -> None:
    """Partial and full refund states that agree with the amounts are stored."""
    await _insert_payment(db, amount="10.00", refunded_amount="4.00", status="PARTIALLY_REFUNDED")
    await _insert_payment(db, amount="10.00", refunded_amount="10.00", status="REFUNDED")


async def _insert_refund(connection: AsyncConnection, payment_id: int, amount: str) -> None:
    await connection.execute(
        text("INSERT INTO refunds (payment_id, amount) VALUES (:p, CAST(:a AS numeric))"),
        {"p": payment_id, "a": amount},
    )


async def _check_deferred(connection: AsyncConnection) -> None:
    """Run the deferred constraint triggers now (they would run at COMMIT)."""
    await connection.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))


async def test_refund_without_updating_the_payment_cannot_commit(db: AsyncConnection) -> None:
    """A refund row the payment's refunded_amount does not account for is refused."""
    payment_id = await _insert_payment(db, amount="10.00")
    await _insert_refund(db, payment_id, "4.00")
    with pytest.raises(IntegrityError, match=r"refunds of payment \d+ sum to 4\.00"):
        await _check_deferred(db)


async def test_refunded_amount_without_refund_rows_cannot_commit(db: AsyncConnection) -> None:
    """Raising refunded_amount with no refund rows behind it is refused."""
    payment_id = await _insert_payment(db, amount="10.00")
    await db.execute(
        text(
            "UPDATE payments SET refunded_amount = 4, status = 'PARTIALLY_REFUNDED' WHERE id = :id"
        ),
        {"id": payment_id},
    )
    with pytest.raises(IntegrityError, match=r"records 4\.00 and 0\.00"):
        await _check_deferred(db)


async def test_refund_rows_and_refunded_amount_that_agree_commit(db: AsyncConnection) -> None:
    """Refund rows written with the matching payment update pass the check."""
    payment_id = await _insert_payment(db, amount="10.00")
    await _insert_refund(db, payment_id, "4.00")
    await _insert_refund(db, payment_id, "6.00")
    await db.execute(
        text("UPDATE payments SET refunded_amount = 10, status = 'REFUNDED' WHERE id = :id"),
        {"id": payment_id},
    )
    await _check_deferred(db)


async def test_negative_amount_is_rejected(db: AsyncConnection) -> None:
    """A negative amount violates the CHECK constraint."""
    with pytest.raises(IntegrityError, match="ck_payments_amount_non_negative"):
        await _insert_payment(db, amount="-0.01")


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("method", "BITCOIN", "ck_payments_method_valid"),
        ("method", "card", "ck_payments_method_valid"),
        ("status", "CHARGED", "ck_payments_status_valid"),
    ],
)
async def test_unknown_method_or_status_is_rejected(
    db: AsyncConnection, column: str, value: str, constraint: str
) -> None:
    """A method or status outside the closed sets violates its CHECK constraint."""
    with pytest.raises(IntegrityError, match=constraint):
        await _insert_payment(db, **{column: value})


async def test_duplicate_idempotency_key_per_operation_and_client_is_rejected(
    db: AsyncConnection,
) -> None:
    """The same (operation, client_id, key) twice violates the unique constraint."""
    statement = text(
        "INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, expires_at)"
        " VALUES (:operation, :client, :key, 'f', 'IN_PROGRESS', now() + interval '1 day')"
    )
    key = f"key-{uuid.uuid4().hex}"
    await db.execute(statement, {"operation": "charge", "client": "default", "key": key})
    # The same key is fine for another operation or another client.
    await db.execute(statement, {"operation": "refund", "client": "default", "key": key})
    await db.execute(statement, {"operation": "charge", "client": "other", "key": key})

    with pytest.raises(IntegrityError, match="uq_idempotency_keys_scope"):
        await db.execute(statement, {"operation": "charge", "client": "default", "key": key})


async def _insert_event(connection: AsyncConnection) -> int:
    payment_id = await _insert_payment(connection)
    result = await connection.execute(
        text(
            "INSERT INTO payment_events (payment_id, event_type, to_status) "
            "VALUES (:id, 'CHARGED', 'SUCCESS') RETURNING id"
        ),
        {"id": payment_id},
    )
    return result.scalar_one()


async def test_payment_events_refuse_update(db: AsyncConnection) -> None:
    """UPDATE on payment_events raises: the event log is append-only."""
    event_id = await _insert_event(db)

    with pytest.raises(DBAPIError, match="append-only"):
        await db.execute(
            text("UPDATE payment_events SET event_type = 'EDITED' WHERE id = :id"),
            {"id": event_id},
        )


async def test_payment_events_refuse_delete(db: AsyncConnection) -> None:
    """DELETE on payment_events raises: the event log is append-only."""
    event_id = await _insert_event(db)

    with pytest.raises(DBAPIError, match="append-only"):
        await db.execute(text("DELETE FROM payment_events WHERE id = :id"), {"id": event_id})


async def test_outbox_message_for_a_missing_payment_is_rejected(db: AsyncConnection) -> None:
    """notification_outbox.payment_id must name a real payment."""
    with pytest.raises(IntegrityError, match="fk_notification_outbox_payment_id_payments"):
        await db.execute(
            text(
                "INSERT INTO notification_outbox (message_type, payment_id, payload) "
                "VALUES ('payment', 999999999999, '{}'::jsonb)"
            )
        )


async def test_idempotency_key_for_a_missing_payment_is_rejected(db: AsyncConnection) -> None:
    """idempotency_keys.payment_id, when set, must name a real payment."""
    with pytest.raises(IntegrityError, match="fk_idempotency_keys_payment_id_payments"):
        await db.execute(
            text(
                "INSERT INTO idempotency_keys (operation, client_id, key, fingerprint, state, "
                "expires_at, payment_id) VALUES ('charge', 'default', 'fk-test', 'f', "
                "'IN_PROGRESS', now() + interval '1 day', 999999999999)"
            )
        )


async def _first_outbox_event_id(url: URL) -> uuid.UUID:
    """Enqueue one message (on a payment of its own) in a fresh database; its event id."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from payment_service.repositories.outbox import OutboxRepository
    from tests.conftest import insert_payment

    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine) as session, session.begin():
            payment_id = await insert_payment(session)
            await OutboxRepository(session).enqueue("payment", payment_id, {"type": "payment"})
            row = (
                await session.execute(text("SELECT id, event_id FROM notification_outbox"))
            ).one()
    finally:
        await engine.dispose()
    assert row.id == 1  # the same local id in both databases...
    return row.event_id


async def test_two_databases_give_their_first_messages_different_event_ids(
    throwaway_url: URL, server_url: URL
) -> None:
    """`outbox-1` repeated between databases; the event id (the receiver's key) does not."""
    name = f"payment_mig_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    other = server_url.set(database=name)
    try:
        await upgrade(throwaway_url)
        await upgrade(other)
        first, second = (
            await _first_outbox_event_id(throwaway_url),
            await _first_outbox_event_id(other),
        )
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert first != second  # ...but different event ids


async def test_0007_gives_existing_outbox_rows_distinct_event_ids(throwaway_url: URL) -> None:
    """Rows from before 0007 are backfilled, each with its own UUID; new rows get one too."""
    await upgrade(throwaway_url, "0006")
    engine = create_async_engine(throwaway_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO payments (trip_id, amount, method, status, reference) "
                    "VALUES (1, 10.00, 'CASH', 'SUCCESS', 'MIG-0007')"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO notification_outbox (message_type, payment_id, payload) "
                    "SELECT 'payment', id, '{}'::jsonb FROM payments, generate_series(1, 3)"
                )
            )
        await upgrade(throwaway_url)
        async with engine.connect() as connection:
            ids = (
                await connection.execute(text("SELECT event_id FROM notification_outbox"))
            ).scalars()
            event_ids = list(ids)
    finally:
        await engine.dispose()
    assert len(set(event_ids)) == 3 and None not in event_ids
