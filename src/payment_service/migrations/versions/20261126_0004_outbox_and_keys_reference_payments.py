"""Outbox messages and completed idempotency keys point at real payments.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 05:42:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("notification_outbox", "idempotency_keys")


def upgrade() -> None:
    for table in TABLES:
        op.create_foreign_key(
            op.f(f"fk_{table}_payment_id_payments"), table, "payments", ["payment_id"], ["id"]
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_constraint(op.f(f"fk_{table}_payment_id_payments"), table, type_="foreignkey")
