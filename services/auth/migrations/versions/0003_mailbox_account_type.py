"""Mailboxes: the account type Google's ID token said at connect time (CONSUMER, WORKSPACE or UNKNOWN), which
decides the mailbox's daily send limit in outbound.

Existing mailboxes start UNKNOWN (their grant's ID token was not kept), except gmail.com and googlemail.com
addresses, which are consumer accounts; the next connect of a mailbox records what Google says.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailboxes") as mailboxes:
        mailboxes.add_column(
            sa.Column("account_type", sa.String(length=16), nullable=False, server_default="UNKNOWN")
        )
    op.execute(
        sa.text(
            "UPDATE mailboxes SET account_type = 'CONSUMER' "
            "WHERE email LIKE '%@gmail.com' OR email LIKE '%@googlemail.com'"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("mailboxes") as mailboxes:
        mailboxes.drop_column("account_type")
