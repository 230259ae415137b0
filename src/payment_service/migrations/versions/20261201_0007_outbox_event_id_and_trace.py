"""Outbox messages get a global event id and the trace they were enqueued in (SPEC §6).

- `notification_outbox.event_id`: a UUID, unique across every database (the old
  `outbox-<id>` key repeated between databases); existing rows get a random one.
  Sent as `Idempotency-Key` and Standard Webhooks `webhook-id`.
- `notification_outbox.traceparent`: the W3C trace context of the transaction that
  enqueued the message, so its delivery joins that trace (NULL when none was active).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 16:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Adding the column with a volatile default fills every existing row with its own UUID.
    op.add_column(
        "notification_outbox",
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
    )
    op.create_unique_constraint(
        op.f("uq_notification_outbox_event_id"), "notification_outbox", ["event_id"]
    )
    op.add_column(
        "notification_outbox", sa.Column("traceparent", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("notification_outbox", "traceparent")
    op.drop_constraint(
        op.f("uq_notification_outbox_event_id"), "notification_outbox", type_="unique"
    )
    op.drop_column("notification_outbox", "event_id")
