"""The payment status agrees with what was refunded.

REFUNDED means all of the amount, PARTIALLY_REFUNDED some of it, any other status
none. The refund service keeps these in step; the database now refuses a row that
does not.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:17:12.873357+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = {
    "refund_status_matches_amount": (
        "(status IN ('PARTIALLY_REFUNDED', 'REFUNDED')) = (refunded_amount > 0)"
    ),
    "refunded_means_all": "status <> 'REFUNDED' OR refunded_amount = amount",
    "partially_refunded_means_some": ("status <> 'PARTIALLY_REFUNDED' OR refunded_amount < amount"),
}


def upgrade() -> None:
    for name, condition in CHECKS.items():
        op.create_check_constraint(op.f(f"ck_payments_{name}"), "payments", condition)


def downgrade() -> None:
    for name in reversed(CHECKS):
        op.drop_constraint(op.f(f"ck_payments_{name}"), "payments", type_="check")
