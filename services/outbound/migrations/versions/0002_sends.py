"""Outbound tables: the per-mailbox send ledger (rolling 24-hour window, Gmail's blocks), the sends with their Gmail
call state and lease, and staged attachments.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.outbound.ledger import UtcDateTime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "send_mailboxes",
        sa.Column("mailbox_id", sa.String(64), primary_key=True),
        sa.Column("daily_limit", sa.Integer(), nullable=True),
        sa.Column("blocked_until", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "send_ledger_entries",
        sa.Column("entry_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("mailbox_id", sa.String(64), sa.ForeignKey("send_mailboxes.mailbox_id"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("released_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_send_ledger_entries_window", "send_ledger_entries", ["mailbox_id", "sent_at"])
    op.create_table(
        "sends",
        sa.Column("send_id", sa.String(64), primary_key=True),
        sa.Column("location_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=False),
        sa.Column("mailbox_id", sa.String(64), nullable=False),
        sa.Column("mailbox_email", sa.String(320), nullable=False),
        sa.Column("ledger_key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("next_step", sa.String(24), nullable=False),
        sa.Column("gmail_calls", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error_reason", sa.String(64), nullable=False),
        sa.Column("retry_time", UtcDateTime(), nullable=True),
        sa.Column("rfc_message_id", sa.String(512), nullable=False),
        sa.Column("final_rfc_message_id", sa.String(512), nullable=False),
        sa.Column("gmail_message_id", sa.String(64), nullable=False),
        sa.Column("gmail_thread_id", sa.String(64), nullable=False),
        sa.Column("reply_gmail_thread_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("message_date", UtcDateTime(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("pending_event", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("call_started_at", UtcDateTime(), nullable=True),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("location_id", "request_id", name="uq_sends_location_request"),
    )
    op.create_index("ix_sends_state_lease", "sends", ["state", "lease_expires_at"])
    op.create_table(
        "staged_attachments",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("location_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("content_type", sa.String(256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("location_id", "request_id", name="uq_staged_attachments_location_request"),
    )
    op.create_index("ix_staged_attachments_expires_at", "staged_attachments", ["expires_at"])


def downgrade() -> None:
    op.drop_table("staged_attachments")
    op.drop_table("sends")
    op.drop_table("send_ledger_entries")
    op.drop_table("send_mailboxes")
