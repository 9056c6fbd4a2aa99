"""The traceparent of the pass that set a mailbox's next check, so the queued pass links to its cause (issue 14).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailbox_sync",
        sa.Column("next_attempt_traceparent", sa.String(length=128), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("mailbox_sync") as batch:
        batch.drop_column("next_attempt_traceparent")
