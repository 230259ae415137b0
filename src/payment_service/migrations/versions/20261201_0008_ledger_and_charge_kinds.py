"""Kinds of charge (fare, tip, adjustment, cancellation fee) and a double-entry ledger.

- `payments.kind` (FARE by default) and `payments.parent_payment_id` (a tip or an
  adjustment points at the trip's fare payment); `payments.trip_snapshot` keeps what
  the charge learned from the Trip service (zones, distance, times, fare parts);
  `payments.commission_rate` is the platform's share in force when it was charged
  (the ledger posts with it, so a later settings change never re-prices a payment).
- `refunds.kind`: REFUND, or ADJUSTMENT for the money a downward fare adjustment gives back.
- `uq_payments_live_trip` now covers FARE and CANCELLATION_FEE only: tips and
  adjustments are further payments on a trip that is already paid.
- `ledger_journals` (one per money movement: a capture or a refund) and
  `ledger_lines` (signed amounts on accounts such as `driver:<id>`,
  `platform:commission`, `processor:clearing`; debit > 0, credit < 0).
- A deferred constraint trigger refuses, at commit, any journal whose lines do not
  sum to zero (or that has fewer than two lines); journals and lines are append-only
  (UPDATE/DELETE refused, like payment_events).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'FARE', 'TIP', 'ADJUSTMENT', 'CANCELLATION_FEE'"
LIVE_WHERE = "status <> 'FAILED' AND kind IN ('FARE', 'CANCELLATION_FEE')"

BALANCE_FUNCTION = """
CREATE FUNCTION ledger_check_journal_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0] names the column holding the journal id (journal_id or id).
    target bigint := (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    total numeric(14, 2);
    line_count integer;
BEGIN
    SELECT coalesce(sum(amount), 0), count(*) INTO total, line_count
      FROM ledger_lines WHERE journal_id = target;
    IF total <> 0 OR line_count < 2 THEN
        RAISE EXCEPTION 'journal % does not balance: % lines summing to %',
            target, line_count, total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_journal_balances';
    END IF;
    RETURN NULL;
END;
$$
"""

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_append_only';
END;
$$
"""


def upgrade() -> None:
    op.add_column(
        "payments", sa.Column("kind", sa.String(24), nullable=False, server_default="FARE")
    )
    op.create_check_constraint(op.f("ck_payments_kind_valid"), "payments", f"kind IN ({KINDS})")
    op.add_column("payments", sa.Column("parent_payment_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_payments_parent_payment_id_payments"),
        "payments",
        "payments",
        ["parent_payment_id"],
        ["id"],
    )
    op.create_index(op.f("ix_payments_parent_payment_id"), "payments", ["parent_payment_id"])
    op.create_check_constraint(
        op.f("ck_payments_parent_matches_kind"),
        "payments",
        "(kind IN ('TIP', 'ADJUSTMENT')) = (parent_payment_id IS NOT NULL)",
    )
    op.add_column("payments", sa.Column("trip_snapshot", postgresql.JSONB(astext_type=sa.Text())))
    op.add_column(
        "payments",
        sa.Column("commission_rate", sa.Numeric(5, 4), nullable=False, server_default="0.2000"),
    )
    op.create_check_constraint(
        op.f("ck_payments_commission_rate_valid"),
        "payments",
        "commission_rate >= 0 AND commission_rate <= 1",
    )
    op.drop_index("uq_payments_live_trip", table_name="payments")
    op.create_index(
        "uq_payments_live_trip",
        "payments",
        ["trip_id"],
        unique=True,
        postgresql_where=sa.text(LIVE_WHERE),
    )
    op.add_column(
        "refunds", sa.Column("kind", sa.String(16), nullable=False, server_default="REFUND")
    )
    op.create_check_constraint(
        op.f("ck_refunds_kind_valid"), "refunds", "kind IN ('REFUND', 'ADJUSTMENT')"
    )

    op.create_table(
        "ledger_journals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("entry_type", sa.String(16), nullable=False),
        sa.Column("payment_kind", sa.String(24), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("refund_id", sa.BigInteger(), nullable=True),
        sa.Column("trip_id", sa.BigInteger(), nullable=False),
        sa.Column("driver_id", sa.BigInteger(), nullable=True),
        sa.Column("rider_id", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "entry_type IN ('CAPTURE', 'REFUND')", name=op.f("ck_ledger_journals_entry_type_valid")
        ),
        sa.CheckConstraint(
            f"payment_kind IN ({KINDS})", name=op.f("ck_ledger_journals_payment_kind_valid")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_journals_amount_positive")),
        sa.CheckConstraint(
            "(entry_type = 'REFUND') = (refund_id IS NOT NULL)",
            name=op.f("ck_ledger_journals_refund_matches_type"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_ledger_journals_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"], name=op.f("fk_ledger_journals_refund_id_refunds")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_journals")),
        sa.UniqueConstraint("refund_id", name=op.f("uq_ledger_journals_refund_id")),
    )
    op.create_index(
        "uq_ledger_journals_capture",
        "ledger_journals",
        ["payment_id"],
        unique=True,
        postgresql_where=sa.text("entry_type = 'CAPTURE'"),
    )
    op.create_index(op.f("ix_ledger_journals_payment_id"), "ledger_journals", ["payment_id"])
    op.create_index(op.f("ix_ledger_journals_trip_id"), "ledger_journals", ["trip_id"])
    op.create_index(
        "ix_ledger_journals_driver_created", "ledger_journals", ["driver_id", "created_at"]
    )
    op.create_table(
        "ledger_lines",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("journal_id", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_lines_amount_non_zero")),
        sa.ForeignKeyConstraint(
            ["journal_id"],
            ["ledger_journals.id"],
            name=op.f("fk_ledger_lines_journal_id_ledger_journals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_lines")),
    )
    op.create_index(op.f("ix_ledger_lines_journal_id"), "ledger_lines", ["journal_id"])
    op.create_index(op.f("ix_ledger_lines_account"), "ledger_lines", ["account"])

    op.execute(BALANCE_FUNCTION)
    op.execute(
        "CREATE CONSTRAINT TRIGGER ledger_lines_balance "
        "AFTER INSERT ON ledger_lines DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION ledger_check_journal_balance('journal_id')"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER ledger_journals_balance "
        "AFTER INSERT ON ledger_journals DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION ledger_check_journal_balance('id')"
    )
    op.execute(APPEND_ONLY_FUNCTION)
    for table in ("ledger_journals", "ledger_lines"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()"
        )


def downgrade() -> None:
    for table in ("ledger_journals", "ledger_lines"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    op.execute("DROP TRIGGER IF EXISTS ledger_journals_balance ON ledger_journals")
    op.execute("DROP TRIGGER IF EXISTS ledger_lines_balance ON ledger_lines")
    op.execute("DROP FUNCTION IF EXISTS ledger_reject_change()")
    op.execute("DROP FUNCTION IF EXISTS ledger_check_journal_balance()")
    op.drop_index(op.f("ix_ledger_lines_account"), table_name="ledger_lines")
    op.drop_index(op.f("ix_ledger_lines_journal_id"), table_name="ledger_lines")
    op.drop_table("ledger_lines")
    op.drop_index("ix_ledger_journals_driver_created", table_name="ledger_journals")
    op.drop_index(op.f("ix_ledger_journals_trip_id"), table_name="ledger_journals")
    op.drop_index(op.f("ix_ledger_journals_payment_id"), table_name="ledger_journals")
    op.drop_index("uq_ledger_journals_capture", table_name="ledger_journals")
    op.drop_table("ledger_journals")
    op.drop_constraint(op.f("ck_refunds_kind_valid"), "refunds", type_="check")
    op.drop_column("refunds", "kind")
    # Downgrading with tips or adjustments recorded fails here (the old index is stricter).
    op.drop_index("uq_payments_live_trip", table_name="payments")
    op.create_index(
        "uq_payments_live_trip",
        "payments",
        ["trip_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'FAILED'"),
    )
    op.drop_constraint(op.f("ck_payments_commission_rate_valid"), "payments", type_="check")
    op.drop_column("payments", "commission_rate")
    op.drop_column("payments", "trip_snapshot")
    op.drop_constraint(op.f("ck_payments_parent_matches_kind"), "payments", type_="check")
    op.drop_index(op.f("ix_payments_parent_payment_id"), table_name="payments")
    op.drop_constraint(
        op.f("fk_payments_parent_payment_id_payments"), "payments", type_="foreignkey"
    )
    op.drop_column("payments", "parent_payment_id")
    op.drop_constraint(op.f("ck_payments_kind_valid"), "payments", type_="check")
    op.drop_column("payments", "kind")
