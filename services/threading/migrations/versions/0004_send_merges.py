"""One CRM message per send (R6, R15): a message placed before its send's answer is merged into the send's message
and marked superseded; the WatchMessages feed can announce a revision of a message it announced before. An
attachment whose content will never be served says why. A location's refused BCC drops are listed by decision.

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
    op.add_column("messages", sa.Column("superseded_by", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_messages_superseded_by", "messages", ["superseded_by"], unique=False)
    op.add_column(
        "attachments", sa.Column("unavailable_reason", sa.Text(), nullable=False, server_default="")
    )
    op.create_index(
        "ix_decisions_location_rule_time",
        "decisions",
        ["location_id", "rule_id", "decide_time"],
        unique=False,
    )
    op.add_column(
        "synced_feed", sa.Column("revised", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "synced_feed", sa.Column("supersedes_message_id", sa.String(64), nullable=False, server_default="")
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_location_rule_time", table_name="decisions")
    with op.batch_alter_table("synced_feed") as batch:
        batch.drop_column("supersedes_message_id")
        batch.drop_column("revised")
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("unavailable_reason")
    op.drop_index("ix_messages_superseded_by", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("superseded_by")
