"""Threading tables: contacts, conversations, threads, messages, participants, mailbox copies, attachments,
seen messages and decisions (R16), CRM sends (R6) and the WatchMessages feed.

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


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("attachment_id", sa.String(length=128), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_id", sa.String(length=512), nullable=False),
        sa.Column("inline", sa.Boolean(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("gmail_attachment_id", sa.String(length=1024), nullable=False),
        sa.Column("source_mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("source_gmail_message_id", sa.String(length=64), nullable=False),
        sa.Column("source_drop_id", sa.String(length=64), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("fetch_attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "attachment_id", name="pk_attachments"),
    )
    op.create_index(
        "ix_attachments_unfetched", "attachments", ["blob_sha256", "fetch_attempts"], unique=False
    )
    op.create_table(
        "contact_emails",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("normalized_email", sa.String(length=320), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "contact_id", "normalized_email", name="pk_contact_emails"),
    )
    op.create_index(
        "ix_contact_emails_lookup", "contact_emails", ["location_id", "normalized_email"], unique=False
    )
    op.create_table(
        "contacts",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=320), nullable=False),
        sa.Column("assigned_user_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("created_by_sync", sa.Boolean(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "contact_id", name="pk_contacts"),
    )
    op.create_index(
        "ix_contacts_location_create", "contacts", ["location_id", "create_time", "contact_id"], unique=False
    )
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("thread_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id"),
        sa.UniqueConstraint("location_id", "contact_id", name="uq_conversations_contact"),
    )
    op.create_index(
        "ix_conversations_activity",
        "conversations",
        ["location_id", "last_message_time", "conversation_id"],
        unique=False,
    )
    op.create_table(
        "crm_sends",
        sa.Column("send_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("final_rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("gmail_message_id", sa.String(length=64), nullable=False),
        sa.Column("gmail_thread_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("send_id"),
    )
    op.create_index("ix_crm_sends_mailbox_state", "crm_sends", ["mailbox_id", "state"], unique=False)
    op.create_table(
        "decisions",
        sa.Column("seen_key", sa.String(length=600), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("synced", sa.Boolean(), nullable=False),
        sa.Column("rule_id", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("decide_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seen_key", "location_id", name="pk_decisions"),
    )
    op.create_table(
        "location_sequences",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("location_id"),
    )
    op.create_table(
        "mailbox_copies",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("gmail_message_id", sa.String(length=64), nullable=False),
        sa.Column("gmail_thread_id", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("unread", sa.Boolean(), nullable=False),
        sa.Column("trashed", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("state_history_id", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "mailbox_id", name="pk_mailbox_copies"),
    )
    op.create_index(
        "ix_mailbox_copies_gmail", "mailbox_copies", ["mailbox_id", "gmail_message_id"], unique=False
    )
    op.create_table(
        "message_references",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("referenced_rfc_id", sa.String(length=600), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint(
            "location_id", "referenced_rfc_id", "message_id", name="pk_message_references"
        ),
    )
    op.create_table(
        "message_rfc_ids",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "rfc_message_id", name="pk_message_rfc_ids"),
    )
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=600), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        sa.Column("body_truncated", sa.Boolean(), nullable=False),
        sa.Column("message_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule_id", sa.String(length=8), nullable=False),
        sa.Column("send_id", sa.String(length=64), nullable=False),
        sa.Column("send_pending", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
        sa.UniqueConstraint("location_id", "dedup_key", name="uq_messages_dedup"),
    )
    op.create_index(
        "ix_messages_conversation_time",
        "messages",
        ["conversation_id", "message_time", "message_id"],
        unique=False,
    )
    op.create_table(
        "participants",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=320), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "role", "position", name="pk_participants"),
    )
    op.create_table(
        "seen_messages",
        sa.Column("seen_key", sa.String(length=600), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("gmail_message_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("location_ids", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seen_key"),
    )
    op.create_index(
        "ix_seen_messages_gmail", "seen_messages", ["mailbox_id", "gmail_message_id"], unique=False
    )
    op.create_index(
        op.f("ix_seen_messages_rfc_message_id"), "seen_messages", ["rfc_message_id"], unique=False
    )
    op.create_table(
        "synced_feed",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=600), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=8), nullable=False),
        sa.Column("sync_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "seq", name="pk_synced_feed"),
    )
    op.create_table(
        "thread_keys",
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "key", name="pk_thread_keys"),
    )
    op.create_index(op.f("ix_thread_keys_thread_id"), "thread_keys", ["thread_id"], unique=False)
    op.create_table(
        "thread_messages",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("message_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "message_id", name="pk_thread_messages"),
    )
    op.create_index("ix_thread_messages_message", "thread_messages", ["message_id"], unique=False)
    op.create_index(
        "ix_thread_messages_time",
        "thread_messages",
        ["thread_id", "message_time", "message_id"],
        unique=False,
    )
    op.create_table(
        "threads",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("location_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id"),
    )
    op.create_index(op.f("ix_threads_conversation_id"), "threads", ["conversation_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_threads_conversation_id"), table_name="threads")
    op.drop_table("threads")
    op.drop_index("ix_thread_messages_time", table_name="thread_messages")
    op.drop_index("ix_thread_messages_message", table_name="thread_messages")
    op.drop_table("thread_messages")
    op.drop_index(op.f("ix_thread_keys_thread_id"), table_name="thread_keys")
    op.drop_table("thread_keys")
    op.drop_table("synced_feed")
    op.drop_index(op.f("ix_seen_messages_rfc_message_id"), table_name="seen_messages")
    op.drop_index("ix_seen_messages_gmail", table_name="seen_messages")
    op.drop_table("seen_messages")
    op.drop_table("participants")
    op.drop_index("ix_messages_conversation_time", table_name="messages")
    op.drop_table("messages")
    op.drop_table("message_rfc_ids")
    op.drop_table("message_references")
    op.drop_index("ix_mailbox_copies_gmail", table_name="mailbox_copies")
    op.drop_table("mailbox_copies")
    op.drop_table("location_sequences")
    op.drop_table("decisions")
    op.drop_index("ix_crm_sends_mailbox_state", table_name="crm_sends")
    op.drop_table("crm_sends")
    op.drop_index("ix_conversations_activity", table_name="conversations")
    op.drop_table("conversations")
    op.drop_index("ix_contacts_location_create", table_name="contacts")
    op.drop_table("contacts")
    op.drop_index("ix_contact_emails_lookup", table_name="contact_emails")
    op.drop_table("contact_emails")
    op.drop_index("ix_attachments_unfetched", table_name="attachments")
    op.drop_table("attachments")
