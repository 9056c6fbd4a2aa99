"""When the mailbox's last push came: Gmail drops the notification of a change made within a second of the one it
sent, so a re-check that finds nothing looks again once that second is over.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mailbox_sync", sa.Column("last_push_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailbox_sync") as batch:
        batch.drop_column("last_push_at")
