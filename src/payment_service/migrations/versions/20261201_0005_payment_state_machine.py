"""Payments as a stored state machine; refunds with their own processor states.

- `PROCESSING` joins the status CHECK: the payment row exists before money moves.
- `payments_status_transition` (BEFORE UPDATE OF status) refuses any change SPEC
  §3a does not list; inserts (the seed) may carry any status.
- `payments.gateway_idempotency_key` / `refunds.gateway_idempotency_key`: the one key
  the processor sees for that payment or refund (unique, never changes).
- Refunds get `status` (PROCESSING -> SUCCEEDED | FAILED); `payments.refund_reserved`
  holds what PROCESSING refunds have set aside, and a CHECK keeps
  `refunded_amount + refund_reserved <= amount`, so refunds still in flight at the
  processor can never over-refund. The deferred refund-sum trigger of 0003 now ties
  SUCCEEDED refunds to `refunded_amount` and PROCESSING ones to `refund_reserved`.
- `idempotency_keys.refund_id`: a refund key is bound to its refund row, so a
  retry resumes that refund instead of reserving again.
- `gateway_events`: each processor webhook event id is applied once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "'PENDING', 'SUCCESS', 'FAILED', 'PARTIALLY_REFUNDED', 'REFUNDED'"
NEW_STATUSES = "'PROCESSING', " + OLD_STATUSES

TRANSITION_FUNCTION = """
CREATE FUNCTION payments_check_status_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'PROCESSING' AND NEW.status IN ('SUCCESS', 'PENDING', 'FAILED'))
        OR (OLD.status = 'PENDING' AND NEW.status IN ('SUCCESS', 'FAILED'))
        OR (OLD.status = 'SUCCESS' AND NEW.status IN ('PARTIALLY_REFUNDED', 'REFUNDED'))
        OR (OLD.status = 'PARTIALLY_REFUNDED' AND NEW.status = 'REFUNDED')
    ) THEN
        RAISE EXCEPTION 'payment % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_status_transition';
    END IF;
    RETURN NEW;
END;
$$
"""

REFUND_TOTAL_FUNCTION = """
CREATE OR REPLACE FUNCTION payments_check_refund_total() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0] names the column holding the payment id (payment_id or id).
    target bigint := (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    confirmed numeric(12, 2);
    in_flight numeric(12, 2);
    recorded numeric(12, 2);
    reserved numeric(12, 2);
BEGIN
    SELECT coalesce(sum(amount) FILTER (WHERE status = 'SUCCEEDED'), 0),
           coalesce(sum(amount) FILTER (WHERE status = 'PROCESSING'), 0)
      INTO confirmed, in_flight FROM refunds WHERE payment_id = target;
    SELECT refunded_amount, refund_reserved INTO recorded, reserved
      FROM payments WHERE id = target;
    IF confirmed IS DISTINCT FROM recorded OR in_flight IS DISTINCT FROM reserved THEN
        RAISE EXCEPTION
            'refunds of payment % sum to % confirmed and % in flight, but it records % and %',
            target, confirmed, in_flight, recorded, reserved
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_sum_to_refunded_amount';
    END IF;
    RETURN NULL;
END;
$$
"""

OLD_REFUND_TOTAL_FUNCTION = """
CREATE OR REPLACE FUNCTION payments_check_refund_total() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    target bigint := (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    total numeric(12, 2);
    recorded numeric(12, 2);
BEGIN
    SELECT coalesce(sum(amount), 0) INTO total FROM refunds WHERE payment_id = target;
    SELECT refunded_amount INTO recorded FROM payments WHERE id = target;
    IF total IS DISTINCT FROM recorded THEN
        RAISE EXCEPTION 'refunds of payment % sum to %, but its refunded_amount is %',
            target, total, recorded
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_sum_to_refunded_amount';
    END IF;
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_payments_status_valid"), "payments", type_="check")
    op.create_check_constraint(
        op.f("ck_payments_status_valid"), "payments", f"status IN ({NEW_STATUSES})"
    )
    op.add_column(
        "payments",
        sa.Column("refund_reserved", sa.Numeric(12, 2), nullable=False, server_default="0"),
    )
    op.add_column("payments", sa.Column("gateway_idempotency_key", sa.String(64)))
    op.create_unique_constraint(
        op.f("uq_payments_gateway_idempotency_key"), "payments", ["gateway_idempotency_key"]
    )
    op.create_check_constraint(
        op.f("ck_payments_refunds_in_flight_within_amount"),
        "payments",
        "refund_reserved >= 0 AND refunded_amount + refund_reserved <= amount",
    )
    # The trigger of 0003 also fires on refund_reserved from now on.
    op.execute("DROP TRIGGER payment_refunded_amount_matches_refunds ON payments")
    op.execute(
        "CREATE CONSTRAINT TRIGGER payment_refunded_amount_matches_refunds "
        "AFTER INSERT OR UPDATE OF refunded_amount, refund_reserved ON payments "
        "DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION payments_check_refund_total('id')"
    )
    op.execute(TRANSITION_FUNCTION)
    op.execute(
        "CREATE TRIGGER payments_status_transition BEFORE UPDATE OF status ON payments "
        "FOR EACH ROW EXECUTE FUNCTION payments_check_status_transition()"
    )

    op.add_column(
        "refunds",
        sa.Column("status", sa.String(16), nullable=False, server_default="SUCCEEDED"),
    )
    op.create_check_constraint(
        op.f("ck_refunds_status_valid"),
        "refunds",
        "status IN ('PROCESSING', 'SUCCEEDED', 'FAILED')",
    )
    op.add_column("refunds", sa.Column("gateway_idempotency_key", sa.String(64)))
    op.create_unique_constraint(
        op.f("uq_refunds_gateway_idempotency_key"), "refunds", ["gateway_idempotency_key"]
    )
    op.add_column("refunds", sa.Column("gateway_reference", sa.String(64)))
    op.add_column("refunds", sa.Column("failure_reason", sa.Text()))
    op.add_column(
        "refunds",
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "ix_refunds_processing",
        "refunds",
        ["created_at"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )
    op.execute(REFUND_TOTAL_FUNCTION)

    op.create_index(
        "ix_payments_unsettled",
        "payments",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('PROCESSING', 'PENDING')"),
    )

    op.add_column(
        "idempotency_keys",
        sa.Column(
            "refund_id",
            sa.BigInteger(),
            sa.ForeignKey("refunds.id", name=op.f("fk_idempotency_keys_refund_id_refunds")),
        ),
    )

    op.create_table(
        "gateway_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), sa.ForeignKey("payments.id")),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("provider", "event_id", name=op.f("uq_gateway_events_event")),
    )


def downgrade() -> None:
    op.drop_table("gateway_events")
    op.drop_constraint(
        op.f("fk_idempotency_keys_refund_id_refunds"), "idempotency_keys", type_="foreignkey"
    )
    op.drop_column("idempotency_keys", "refund_id")
    op.drop_index("ix_payments_unsettled", table_name="payments")
    op.execute(OLD_REFUND_TOTAL_FUNCTION)
    op.drop_index("ix_refunds_processing", table_name="refunds")
    # Refund rows that never succeeded have no place in the old schema.
    op.execute("DELETE FROM refunds WHERE status <> 'SUCCEEDED'")
    for column in ("updated_at", "failure_reason", "gateway_reference"):
        op.drop_column("refunds", column)
    op.drop_constraint(op.f("uq_refunds_gateway_idempotency_key"), "refunds", type_="unique")
    op.drop_column("refunds", "gateway_idempotency_key")
    op.drop_constraint(op.f("ck_refunds_status_valid"), "refunds", type_="check")
    op.drop_column("refunds", "status")

    op.execute("DROP TRIGGER payments_status_transition ON payments")
    op.execute("DROP FUNCTION payments_check_status_transition()")
    op.execute("DROP TRIGGER payment_refunded_amount_matches_refunds ON payments")
    op.execute(
        "CREATE CONSTRAINT TRIGGER payment_refunded_amount_matches_refunds "
        "AFTER INSERT OR UPDATE OF refunded_amount ON payments "
        "DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION payments_check_refund_total('id')"
    )
    op.drop_constraint(
        op.f("ck_payments_refunds_in_flight_within_amount"), "payments", type_="check"
    )
    op.drop_constraint(op.f("uq_payments_gateway_idempotency_key"), "payments", type_="unique")
    op.drop_column("payments", "gateway_idempotency_key")
    op.drop_column("payments", "refund_reserved")
    # PROCESSING payments never moved money: they become FAILED attempts.
    op.execute("UPDATE payments SET status = 'FAILED' WHERE status = 'PROCESSING'")
    op.drop_constraint(op.f("ck_payments_status_valid"), "payments", type_="check")
    op.create_check_constraint(
        op.f("ck_payments_status_valid"), "payments", f"status IN ({OLD_STATUSES})"
    )
