"""Trace contexts stored with work done later (issue 14): an attachment row keeps the traceparent of the message's
trace, so the attachment fetch links to it; a CRM send keeps its send's, so its Sent copy links to the send.

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
        "attachments",
        sa.Column("placed_traceparent", sa.String(length=128), nullable=False, server_default=""),
    )
    op.add_column(
        "crm_sends", sa.Column("send_traceparent", sa.String(length=128), nullable=False, server_default="")
    )


def downgrade() -> None:
    with op.batch_alter_table("crm_sends") as batch:
        batch.drop_column("send_traceparent")
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("placed_traceparent")
