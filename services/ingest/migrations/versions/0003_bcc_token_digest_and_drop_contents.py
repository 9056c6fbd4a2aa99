"""BCC drops: the token's digest (unique, what drops are looked up by) beside the token, and the raw content of
accepted drops kept until an expiry for FetchAttachment.

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
    # No address was ever handed out before this revision (no RPC created one), so the table is empty.
    with op.batch_alter_table("bcc_addresses") as batch:
        batch.add_column(sa.Column("token_digest", sa.String(length=64), nullable=False))
        batch.create_unique_constraint("uq_bcc_addresses_token_digest", ["token_digest"])
    op.create_table(
        "bcc_drop_contents",
        sa.Column("drop_id", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("drop_id", name="pk_bcc_drop_contents"),
    )
    op.create_index("ix_bcc_drop_contents_expires_at", "bcc_drop_contents", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_bcc_drop_contents_expires_at", table_name="bcc_drop_contents")
    op.drop_table("bcc_drop_contents")
    with op.batch_alter_table("bcc_addresses") as batch:
        batch.drop_constraint("uq_bcc_addresses_token_digest", type_="unique")
        batch.drop_column("token_digest")
