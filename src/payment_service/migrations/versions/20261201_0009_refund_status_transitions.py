"""Refund rows change state only as the processor allows: PROCESSING -> SUCCEEDED | FAILED.

Until now only the guarded `UPDATE .. WHERE status = 'PROCESSING'` in
`repositories/payment.finish_refund` kept a finished refund finished; this trigger makes
the database refuse any other status change (a SUCCEEDED refund cannot go back to
PROCESSING or FAILED), and refuses moving a refund's amount or payment at all, since the
reservation and refund-sum checks were computed from them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:55:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION refunds_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount IS DISTINCT FROM OLD.amount OR NEW.payment_id IS DISTINCT FROM OLD.payment_id
    THEN
        RAISE EXCEPTION 'refund % cannot change its amount or payment', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_status_transition';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (OLD.status = 'PROCESSING' AND NEW.status IN ('SUCCEEDED', 'FAILED')) THEN
        RAISE EXCEPTION 'refund % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_status_transition';
    END IF;
    RETURN NEW;
END;
$$
"""


def upgrade() -> None:
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER refunds_status_transition BEFORE UPDATE ON refunds "
        "FOR EACH ROW EXECUTE FUNCTION refunds_check_transition()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS refunds_status_transition ON refunds")
    op.execute("DROP FUNCTION IF EXISTS refunds_check_transition()")
