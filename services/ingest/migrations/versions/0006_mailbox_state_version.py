"""A version of the mailbox's state bumped by every connection event: a sync pass's own stop is fenced by it, so
an answer of auth from before a reconnect cannot stop the mailbox the reconnect resumed.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mailbox_sync",
        sa.Column("state_version", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("mailbox_sync") as batch:
        batch.drop_column("state_version")
