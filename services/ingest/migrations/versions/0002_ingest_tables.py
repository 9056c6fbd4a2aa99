"""Ingest tables: per-mailbox sync state with its fenced lease, the ids-only published ledger, BCC addresses and
the BCC drop log.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mailbox_sync",
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_email", sa.String(length=320), nullable=False),
        sa.Column("history_cursor", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", _WHEN, nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("latest_seen_history_id", sa.BigInteger(), nullable=False),
        sa.Column("last_synced_internal_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_sync_at", _WHEN, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _WHEN, nullable=True),
        sa.Column("messages_published", sa.BigInteger(), nullable=False),
        sa.Column("messages_skipped", sa.BigInteger(), nullable=False),
        sa.Column("resyncs", sa.Integer(), nullable=False),
        sa.Column("last_audit_at", _WHEN, nullable=True),
        sa.Column("last_audit_missing", sa.Integer(), nullable=False),
        sa.Column("next_attempt_reason", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("mailbox_id", name="pk_mailbox_sync"),
    )
    # The scheduler's scan: due checks, oldest first.
    op.create_index("ix_mailbox_sync_next_attempt_at", "mailbox_sync", ["next_attempt_at"], unique=False)
    op.create_table(
        "published_messages",
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("gmail_message_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=998), nullable=False),
        sa.Column("history_id", sa.BigInteger(), nullable=False),
        sa.Column("internal_ms", sa.BigInteger(), nullable=False),
        sa.Column("published_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("mailbox_id", "gmail_message_id", name="pk_published_messages"),
    )
    op.create_table(
        "bcc_addresses",
        sa.Column("location_id", sa.String(length=128), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("location_id", name="pk_bcc_addresses"),
        sa.UniqueConstraint("token", name="uq_bcc_addresses_token"),
    )
    op.create_table(
        "bcc_drops",
        sa.Column("drop_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=128), nullable=False),
        sa.Column("content_digest", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=998), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("drop_id", name="pk_bcc_drops"),
    )
    op.create_index("ix_bcc_drops_location_id", "bcc_drops", ["location_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_bcc_drops_location_id", table_name="bcc_drops")
    op.drop_table("bcc_drops")
    op.drop_table("bcc_addresses")
    op.drop_table("published_messages")
    op.drop_index("ix_mailbox_sync_next_attempt_at", table_name="mailbox_sync")
    op.drop_table("mailbox_sync")
