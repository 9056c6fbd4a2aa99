"""SQLAlchemy models of the threading service: contacts, conversations, threads, messages and what explains them.

Ids of conversations, threads and messages are derived from their unique keys (uuid5), so two replicas that
race on the same key compute the same id and `INSERT ... ON CONFLICT DO NOTHING` makes exactly one row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.messaging_tables import add_runtime_tables

_ID_NAMESPACE = uuid.UUID("6f1c2b4e-8a0d-4f5e-9b7a-2c3d4e5f6a7b")


@lru_cache(maxsize=65536)
def derived_id(kind: str, location_id: str, key: str) -> str:
    """A stable id for the row with this unique key (same inputs, same id, on every replica)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{kind}\x1f{location_id}\x1f{key}"))


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way in and out (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware UTC")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


_KEY = String(64)


class Base(DeclarativeBase):
    metadata = MetaData()


def table_of(model: type[Base]) -> Table:
    """The Core table of a model (what the batch writes and loads use)."""
    return cast(Table, model.__table__)


class ContactRow(Base):
    __tablename__ = "contacts"
    location_id: Mapped[str] = mapped_column(_KEY)
    contact_id: Mapped[str] = mapped_column(_KEY)
    display_name: Mapped[str] = mapped_column(String(320), default="")
    assigned_user_id: Mapped[str] = mapped_column(_KEY, default="")
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # A delete is a tombstone carrying its version, so a stale upsert cannot resurrect the contact.
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by_sync: Mapped[bool] = mapped_column(Boolean, default=False)
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (
        PrimaryKeyConstraint("location_id", "contact_id", name="pk_contacts"),
        Index("ix_contacts_location_create", "location_id", "create_time", "contact_id"),
    )


class ContactEmailRow(Base):
    __tablename__ = "contact_emails"
    location_id: Mapped[str] = mapped_column(_KEY)
    contact_id: Mapped[str] = mapped_column(_KEY)
    normalized_email: Mapped[str] = mapped_column(String(320))
    email: Mapped[str] = mapped_column(String(320))
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    position: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (
        PrimaryKeyConstraint("location_id", "contact_id", "normalized_email", name="pk_contact_emails"),
        Index("ix_contact_emails_lookup", "location_id", "normalized_email"),
        # A batch looks up all its addresses at once, whatever the location (snapshot.py).
        Index("ix_contact_emails_email", "normalized_email"),
    )


class ConversationRow(Base):
    __tablename__ = "conversations"
    conversation_id: Mapped[str] = mapped_column(_KEY, primary_key=True)
    location_id: Mapped[str] = mapped_column(_KEY)
    contact_id: Mapped[str] = mapped_column(_KEY)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_message_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    message_count: Mapped[int] = mapped_column(BigInteger, default=0)
    thread_count: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (
        UniqueConstraint("location_id", "contact_id", name="uq_conversations_contact"),
        Index("ix_conversations_activity", "location_id", "last_message_time", "conversation_id"),
    )


class ThreadRow(Base):
    __tablename__ = "threads"
    thread_id: Mapped[str] = mapped_column(_KEY, primary_key=True)
    location_id: Mapped[str] = mapped_column(_KEY)
    conversation_id: Mapped[str] = mapped_column(_KEY, index=True)
    # "gmail" (a Gmail thread of one mailbox), "crm" (started from the CRM, R6) or "chain" (a drop's Message-IDs).
    origin: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class ThreadKeyRow(Base):
    """Every key a thread is known by in its location: its Gmail thread in each mailbox, its creation key."""

    __tablename__ = "thread_keys"
    location_id: Mapped[str] = mapped_column(_KEY)
    key: Mapped[str] = mapped_column(String(600))
    thread_id: Mapped[str] = mapped_column(_KEY, index=True)
    __table_args__ = (
        PrimaryKeyConstraint("location_id", "key", name="pk_thread_keys"),
        Index("ix_thread_keys_key", "key"),
    )


class MessageRow(Base):
    __tablename__ = "messages"
    message_id: Mapped[str] = mapped_column(_KEY, primary_key=True)
    location_id: Mapped[str] = mapped_column(_KEY)
    # R15: the Message-ID, else mailbox + Gmail id, else a drop's digest, else the CRM send id.
    dedup_key: Mapped[str] = mapped_column(String(600))
    conversation_id: Mapped[str] = mapped_column(_KEY)
    contact_id: Mapped[str] = mapped_column(_KEY)
    rfc_message_id: Mapped[str] = mapped_column(String(600), default="")
    direction: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    body_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    message_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    rule_id: Mapped[str] = mapped_column(String(8))
    send_id: Mapped[str] = mapped_column(_KEY, default="")
    send_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # Set when this record turned out to be another copy of a CRM send's message and was merged into it (R6, R15):
    # the row stays (its id still reads as the survivor) but lists show the survivor only.
    superseded_by: Mapped[str] = mapped_column(_KEY, default="", server_default="")
    __table_args__ = (
        UniqueConstraint("location_id", "dedup_key", name="uq_messages_dedup"),
        # Keyset pagination of a conversation (ListMessages on 10,000 messages).
        Index("ix_messages_conversation_time", "conversation_id", "message_time", "message_id"),
        # The records merged into a message (read with it).
        Index("ix_messages_superseded_by", "superseded_by"),
    )


class MessageRfcIdRow(Base):
    """Every Message-ID a stored message is known by in its location (Gmail may replace a CRM send's, R6)."""

    __tablename__ = "message_rfc_ids"
    location_id: Mapped[str] = mapped_column(_KEY)
    rfc_message_id: Mapped[str] = mapped_column(String(600))
    message_id: Mapped[str] = mapped_column(_KEY)
    __table_args__ = (
        PrimaryKeyConstraint("location_id", "rfc_message_id", name="pk_message_rfc_ids"),
        # Whether a Message-ID is known at all (the wait on a parent, R4), and a batch's lookups.
        Index("ix_message_rfc_ids_rfc", "rfc_message_id"),
    )


class MessageReferenceRow(Base):
    """The Message-IDs a stored message replies to, so a parent that arrives later finds its thread (R4)."""

    __tablename__ = "message_references"
    location_id: Mapped[str] = mapped_column(_KEY)
    referenced_rfc_id: Mapped[str] = mapped_column(String(600))
    message_id: Mapped[str] = mapped_column(_KEY)
    __table_args__ = (
        PrimaryKeyConstraint("location_id", "referenced_rfc_id", "message_id", name="pk_message_references"),
        Index("ix_message_references_rfc", "referenced_rfc_id"),
    )


class ThreadMessageRow(Base):
    __tablename__ = "thread_messages"
    thread_id: Mapped[str] = mapped_column(_KEY)
    message_id: Mapped[str] = mapped_column(_KEY)
    message_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (
        PrimaryKeyConstraint("thread_id", "message_id", name="pk_thread_messages"),
        Index("ix_thread_messages_message", "message_id"),
        Index("ix_thread_messages_time", "thread_id", "message_time", "message_id"),
    )


class ParticipantRow(Base):
    __tablename__ = "participants"
    message_id: Mapped[str] = mapped_column(_KEY)
    role: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(320), default="")
    __table_args__ = (PrimaryKeyConstraint("message_id", "role", "position", name="pk_participants"),)


class MailboxCopyRow(Base):
    """A message as seen in one mailbox, with its Gmail state (R17)."""

    __tablename__ = "mailbox_copies"
    message_id: Mapped[str] = mapped_column(_KEY)
    mailbox_id: Mapped[str] = mapped_column(_KEY)
    location_id: Mapped[str] = mapped_column(_KEY)
    gmail_message_id: Mapped[str] = mapped_column(_KEY)
    gmail_thread_id: Mapped[str] = mapped_column(_KEY, default="")
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    unread: Mapped[bool] = mapped_column(Boolean, default=False)
    trashed: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    state_history_id: Mapped[int] = mapped_column(BigInteger, default=0)
    update_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (
        PrimaryKeyConstraint("message_id", "mailbox_id", name="pk_mailbox_copies"),
        # Gmail id first: a batch looks up the copies of all its changes by Gmail id (snapshot.py).
        Index("ix_mailbox_copies_gmail_id", "gmail_message_id", "mailbox_id"),
    )


class AttachmentRow(Base):
    __tablename__ = "attachments"
    message_id: Mapped[str] = mapped_column(_KEY)
    attachment_id: Mapped[str] = mapped_column(String(128))
    location_id: Mapped[str] = mapped_column(_KEY)
    filename: Mapped[str] = mapped_column(String(512), default="")
    content_type: Mapped[str] = mapped_column(String(255), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    content_id: Mapped[str] = mapped_column(String(512), default="")
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    gmail_attachment_id: Mapped[str] = mapped_column(String(1024), default="")
    # Where to fetch the content from (the mailbox copy or the drop that carried it).
    source_mailbox_id: Mapped[str] = mapped_column(_KEY, default="")
    source_gmail_message_id: Mapped[str] = mapped_column(_KEY, default="")
    source_drop_id: Mapped[str] = mapped_column(_KEY, default="")
    # Set once the content is in the blob store (content-addressed by this digest).
    blob_sha256: Mapped[str] = mapped_column(String(64), default="")
    fetch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set when the content will never be served (its source has none, or every attempt failed): why, for readers.
    unavailable_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # The W3C traceparent of the message's trace when it was placed ("" when untraced): the later fetch links to
    # it (runtime.trace_links). Written with the row, so it costs no statement.
    placed_traceparent: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # After a failed attempt, not before this time (None: at once); the collector backs off per attachment.
    retry_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True, default=None)
    __table_args__ = (
        PrimaryKeyConstraint("message_id", "attachment_id", name="pk_attachments"),
        Index("ix_attachments_unfetched", "blob_sha256", "fetch_attempts"),
    )


class SeenMessageRow(Base):
    """Every message copy the service was handed, placed or not: ids and addresses; the subject only of a copy
    that synced somewhere; never a body (R18)."""

    __tablename__ = "seen_messages"
    seen_key: Mapped[str] = mapped_column(String(600), primary_key=True)
    mailbox_id: Mapped[str] = mapped_column(_KEY, default="")
    gmail_message_id: Mapped[str] = mapped_column(_KEY, default="")
    rfc_message_id: Mapped[str] = mapped_column(String(600), default="", index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    participants: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    location_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    first_seen: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (Index("ix_seen_messages_gmail_id", "gmail_message_id", "mailbox_id"),)


class DecisionRow(Base):
    """The rules' decision for one copy in one location (R16), kept for explanations."""

    __tablename__ = "decisions"
    seen_key: Mapped[str] = mapped_column(String(600))
    location_id: Mapped[str] = mapped_column(_KEY)
    synced: Mapped[bool] = mapped_column(Boolean)
    rule_id: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    contact_id: Mapped[str] = mapped_column(_KEY, default="")
    conversation_id: Mapped[str] = mapped_column(_KEY, default="")
    message_id: Mapped[str] = mapped_column(_KEY, default="")
    decide_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (
        PrimaryKeyConstraint("seen_key", "location_id", name="pk_decisions"),
        # A location's refused BCC drops, newest first (ListRefusedDrops).
        Index("ix_decisions_location_rule_time", "location_id", "rule_id", "decide_time"),
    )


class CrmSendRow(Base):
    __tablename__ = "crm_sends"
    send_id: Mapped[str] = mapped_column(_KEY, primary_key=True)
    location_id: Mapped[str] = mapped_column(_KEY)
    mailbox_id: Mapped[str] = mapped_column(_KEY)
    message_id: Mapped[str] = mapped_column(_KEY, default="")
    rfc_message_id: Mapped[str] = mapped_column(String(600), default="")
    final_rfc_message_id: Mapped[str] = mapped_column(String(600), default="")
    gmail_message_id: Mapped[str] = mapped_column(_KEY, default="")
    gmail_thread_id: Mapped[str] = mapped_column(_KEY, default="")
    # "pending", "sent" or "failed".
    state: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # The W3C traceparent of the send's trace (from outbound's event): the Sent copy that Gmail's history brings
    # back later, in a trace of its own, links to it.
    send_traceparent: Mapped[str] = mapped_column(String(128), default="", server_default="")
    __table_args__ = (Index("ix_crm_sends_mailbox_state", "mailbox_id", "state"),)


class LocationSequenceRow(Base):
    """The last WatchMessages cursor of a location; its row lock orders commits, so the feed has no gaps."""

    __tablename__ = "location_sequences"
    location_id: Mapped[str] = mapped_column(_KEY, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class SyncedFeedRow(Base):
    """Newly synced messages of a location in commit order (WatchMessages resumes after a cursor)."""

    __tablename__ = "synced_feed"
    location_id: Mapped[str] = mapped_column(_KEY)
    seq: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str] = mapped_column(_KEY)
    conversation_id: Mapped[str] = mapped_column(_KEY)
    thread_id: Mapped[str] = mapped_column(_KEY)
    contact_id: Mapped[str] = mapped_column(_KEY)
    rfc_message_id: Mapped[str] = mapped_column(String(600), default="")
    direction: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    rule_id: Mapped[str] = mapped_column(String(8))
    sync_time: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # A revision of a message announced before (Gmail's Message-ID became known, or a merge, R6).
    revised: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The message this entry's message replaces (merged into it); readers drop it.
    supersedes_message_id: Mapped[str] = mapped_column(_KEY, default="", server_default="")
    __table_args__ = (PrimaryKeyConstraint("location_id", "seq", name="pk_synced_feed"),)


metadata = Base.metadata
add_runtime_tables(metadata)
THREADING_TABLES = [
    t for t in metadata.sorted_tables if t.name not in {"outbox", "processed_messages", "dead_letters"}
]
