"""The largest raw message of a mailbox's last pass (its next pass sizes its first fetch batch by it), and the
mailbox's Gmail address indexed (a push finds its mailbox in ingest's table rather than asking auth).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailbox_sync",
        sa.Column("recent_message_chars", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_mailbox_sync_mailbox_email", "mailbox_sync", ["mailbox_email"])


def downgrade() -> None:
    op.drop_index("ix_mailbox_sync_mailbox_email", table_name="mailbox_sync")
    with op.batch_alter_table("mailbox_sync") as batch:
        batch.drop_column("recent_message_chars")
