"""Refund rows always add up to the payment's refunded_amount.

`ck_payments_refund_within_amount` keeps `refunded_amount <= amount`; these
constraint triggers tie that column to the refund rows themselves, so a refund
inserted without updating its payment (or the reverse) cannot commit. They are
DEFERRABLE INITIALLY DEFERRED: the refund service writes both rows in one
transaction, and the check runs at COMMIT.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 05:40:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK_FUNCTION = """
CREATE FUNCTION payments_check_refund_total() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0] names the column holding the payment id (payment_id or id).
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

TRIGGERS = {
    "refunds_sum_matches_payment": ("AFTER INSERT OR UPDATE ON refunds", "payment_id"),
    "payment_refunded_amount_matches_refunds": (
        "AFTER INSERT OR UPDATE OF refunded_amount ON payments",
        "id",
    ),
}


def upgrade() -> None:
    op.execute(CHECK_FUNCTION)
    for name, (event, column) in TRIGGERS.items():
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {name} {event} DEFERRABLE INITIALLY DEFERRED "
            f"FOR EACH ROW EXECUTE FUNCTION payments_check_refund_total('{column}')"
        )


def downgrade() -> None:
    for name, (event, _column) in TRIGGERS.items():
        table = event.rsplit(" ", 1)[-1]
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS payments_check_refund_total()")
