"""Sends: the end of a call's window for the Sent-folder search, whether Gmail's Message-ID was read; staged
uploads kept for the send that used them; the ledger learns each mailbox's account type, and its daily_limit
becomes the explicitly set limit only.

Before this revision daily_limit was written from a guess (every domain but gmail.com counted as Workspace), so
it is cleared: the account type the connection knows now decides until a limit is set through the API.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.outbound.ledger import UtcDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sends") as sends:
        sends.add_column(sa.Column("call_ended_by", UtcDateTime(), nullable=True))
        sends.add_column(
            sa.Column("message_id_confirmed", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.create_index("ix_sends_mailbox_gmail_message", "sends", ["mailbox_id", "gmail_message_id"])
    with op.batch_alter_table("staged_attachments") as staged:
        staged.add_column(sa.Column("send_id", sa.String(64), nullable=True))
    with op.batch_alter_table("send_mailboxes") as mailboxes:
        mailboxes.add_column(sa.Column("account_type", sa.String(16), nullable=True))
    op.execute(sa.text("UPDATE send_mailboxes SET daily_limit = NULL"))


def downgrade() -> None:
    with op.batch_alter_table("send_mailboxes") as mailboxes:
        mailboxes.drop_column("account_type")
    with op.batch_alter_table("staged_attachments") as staged:
        staged.drop_column("send_id")
    op.drop_index("ix_sends_mailbox_gmail_message", table_name="sends")
    with op.batch_alter_table("sends") as sends:
        sends.drop_column("message_id_confirmed")
        sends.drop_column("call_ended_by")
