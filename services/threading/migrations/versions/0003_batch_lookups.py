"""Indexes for the batched message path: a batch looks up each kind of key with one IN on a single indexed column
(thread keys, Message-IDs, references, contact addresses), and finds mailbox copies and seen copies by Gmail id.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_thread_keys_key", "thread_keys", ["key"], unique=False)
    op.create_index("ix_message_rfc_ids_rfc", "message_rfc_ids", ["rfc_message_id"], unique=False)
    op.create_index("ix_message_references_rfc", "message_references", ["referenced_rfc_id"], unique=False)
    op.create_index("ix_contact_emails_email", "contact_emails", ["normalized_email"], unique=False)
    op.drop_index("ix_mailbox_copies_gmail", table_name="mailbox_copies")
    op.create_index(
        "ix_mailbox_copies_gmail_id", "mailbox_copies", ["gmail_message_id", "mailbox_id"], unique=False
    )
    op.drop_index("ix_seen_messages_gmail", table_name="seen_messages")
    op.create_index(
        "ix_seen_messages_gmail_id", "seen_messages", ["gmail_message_id", "mailbox_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_seen_messages_gmail_id", table_name="seen_messages")
    op.create_index(
        "ix_seen_messages_gmail", "seen_messages", ["mailbox_id", "gmail_message_id"], unique=False
    )
    op.drop_index("ix_mailbox_copies_gmail_id", table_name="mailbox_copies")
    op.create_index(
        "ix_mailbox_copies_gmail", "mailbox_copies", ["mailbox_id", "gmail_message_id"], unique=False
    )
    op.drop_index("ix_contact_emails_email", table_name="contact_emails")
    op.drop_index("ix_message_references_rfc", table_name="message_references")
    op.drop_index("ix_message_rfc_ids_rfc", table_name="message_rfc_ids")
    op.drop_index("ix_thread_keys_key", table_name="thread_keys")
