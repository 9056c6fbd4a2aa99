"""The queries the read API answers from, always filtered by location (another location's ids find nothing), with
keyset pagination (a page of a 10,000-message conversation costs one index range scan)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.threading.domain.addresses import normalize_message_id
from services.threading.store.models import (
    AttachmentRow,
    ConversationRow,
    DecisionRow,
    LocationSequenceRow,
    MailboxCopyRow,
    MessageRow,
    ParticipantRow,
    SeenMessageRow,
    SyncedFeedRow,
    ThreadMessageRow,
    ThreadRow,
)


@dataclass(frozen=True)
class ConversationView:
    conversation_id: str
    location_id: str
    contact_id: str
    last_message_time: dt.datetime
    message_count: int
    thread_count: int
    create_time: dt.datetime


@dataclass(frozen=True)
class ParticipantView:
    email: str
    display_name: str
    role: str
    position: int


@dataclass(frozen=True)
class AttachmentView:
    attachment_id: str
    filename: str
    content_type: str
    size_bytes: int
    content_id: str
    inline: bool
    sha256: str


@dataclass(frozen=True)
class MailboxCopyView:
    mailbox_id: str
    gmail_message_id: str
    gmail_thread_id: str
    labels: tuple[str, ...]
    unread: bool
    trashed: bool
    deleted: bool
    update_time: dt.datetime


@dataclass(frozen=True)
class MessageView:
    message_id: str
    location_id: str
    conversation_id: str
    thread_ids: tuple[str, ...]
    rfc_message_id: str
    direction: str
    source: str
    subject: str
    participants: tuple[ParticipantView, ...]
    text_body: str
    html_body: str
    attachments: tuple[AttachmentView, ...]
    message_time: dt.datetime
    mailbox_copies: tuple[MailboxCopyView, ...]
    rule_id: str
    send_id: str
    send_pending: bool


@dataclass(frozen=True)
class FeedEntry:
    seq: int
    location_id: str
    message_id: str
    conversation_id: str
    thread_id: str
    contact_id: str
    rfc_message_id: str
    direction: str
    source: str
    rule_id: str
    sync_time: dt.datetime


@dataclass(frozen=True)
class DecisionView:
    location_id: str
    synced: bool
    rule_id: str
    reason: str
    contact_id: str
    conversation_id: str
    message_id: str
    decide_time: dt.datetime


@dataclass(frozen=True)
class Explanation:
    rfc_message_id: str
    subject: str
    participants: tuple[ParticipantView, ...]
    decisions: tuple[DecisionView, ...]


def _conversation(row: ConversationRow) -> ConversationView:
    return ConversationView(
        row.conversation_id,
        row.location_id,
        row.contact_id,
        row.last_message_time,
        row.message_count,
        row.thread_count,
        row.create_time,
    )


async def list_conversations(
    session: AsyncSession,
    location_id: str,
    *,
    contact_id: str = "",
    limit: int,
    after: tuple[dt.datetime, str] | None = None,
) -> list[ConversationView]:
    """Newest activity first; conversations without a message (a lost race) are not listed."""
    query = select(ConversationRow).where(
        ConversationRow.location_id == location_id, ConversationRow.message_count > 0
    )
    if contact_id:
        query = query.where(ConversationRow.contact_id == contact_id)
    if after is not None:
        when, last_id = after
        query = query.where(
            (ConversationRow.last_message_time < when)
            | ((ConversationRow.last_message_time == when) & (ConversationRow.conversation_id < last_id))
        )
    query = query.order_by(ConversationRow.last_message_time.desc(), ConversationRow.conversation_id.desc())
    rows = (await session.execute(query.limit(limit))).scalars().all()
    return [_conversation(r) for r in rows]


async def get_conversation(
    session: AsyncSession, location_id: str, conversation_id: str
) -> ConversationView | None:
    row = await session.get(ConversationRow, conversation_id)
    if row is None or row.location_id != location_id or row.message_count == 0:
        return None
    return _conversation(row)


async def thread_in_location(session: AsyncSession, location_id: str, thread_id: str) -> bool:
    row = await session.get(ThreadRow, thread_id)
    return row is not None and row.location_id == location_id


# Plain columns, not ORM entities: a page of 50 messages is read without an identity map or attribute events.
_MESSAGE_COLUMNS = (
    MessageRow.message_id,
    MessageRow.location_id,
    MessageRow.conversation_id,
    MessageRow.rfc_message_id,
    MessageRow.direction,
    MessageRow.source,
    MessageRow.subject,
    MessageRow.text_body,
    MessageRow.html_body,
    MessageRow.message_time,
    MessageRow.rule_id,
    MessageRow.send_id,
    MessageRow.send_pending,
)


def _page_query(by_thread: bool, keyset: bool) -> Any:
    """The statement of one kind of page (built once: only its bound values change from call to call)."""
    if by_thread:
        query = (
            select(*_MESSAGE_COLUMNS)
            .join(ThreadMessageRow, ThreadMessageRow.message_id == MessageRow.message_id)
            .where(
                ThreadMessageRow.thread_id == bindparam("key"),
                MessageRow.location_id == bindparam("location"),
            )
        )
        time_column, id_column = ThreadMessageRow.message_time, ThreadMessageRow.message_id
    else:
        query = select(*_MESSAGE_COLUMNS).where(
            MessageRow.conversation_id == bindparam("key"), MessageRow.location_id == bindparam("location")
        )
        time_column, id_column = MessageRow.message_time, MessageRow.message_id
    if keyset:
        when = bindparam("after_time", type_=MessageRow.message_time.type)
        query = query.where(
            (time_column > when) | ((time_column == when) & (id_column > bindparam("after_id")))
        )
    return query.order_by(time_column, id_column).limit(bindparam("limit"))


_PAGES = {
    (by_thread, keyset): _page_query(by_thread, keyset)
    for by_thread in (False, True)
    for keyset in (False, True)
}


async def list_messages(
    session: AsyncSession,
    location_id: str,
    *,
    conversation_id: str = "",
    thread_id: str = "",
    limit: int,
    after: tuple[dt.datetime, str] | None = None,
) -> list[MessageView]:
    """Oldest first (reading order) within a conversation or a thread, keyset-paged by (message_time, id)."""
    values: dict[str, Any] = {"key": thread_id or conversation_id, "location": location_id, "limit": limit}
    if after is not None:
        values["after_time"], values["after_id"] = after
    rows = (await session.execute(_PAGES[(bool(thread_id), after is not None)], values)).all()
    return await _views(session, list(rows))


async def get_message(session: AsyncSession, location_id: str, message_id: str) -> MessageView | None:
    row = (
        await session.execute(select(*_MESSAGE_COLUMNS).where(MessageRow.message_id == message_id))
    ).first()
    if row is None or row.location_id != location_id:
        return None
    return (await _views(session, [row]))[0]


def _of_messages(*columns: Any) -> Any:
    return select(*columns).where(columns[0].in_(bindparam("ids", expanding=True)))


_PARTICIPANTS = _of_messages(
    ParticipantRow.message_id,
    ParticipantRow.email,
    ParticipantRow.display_name,
    ParticipantRow.role,
    ParticipantRow.position,
).order_by(ParticipantRow.message_id, ParticipantRow.role, ParticipantRow.position)
_ATTACHMENTS = _of_messages(
    AttachmentRow.message_id,
    AttachmentRow.attachment_id,
    AttachmentRow.filename,
    AttachmentRow.content_type,
    AttachmentRow.size_bytes,
    AttachmentRow.content_id,
    AttachmentRow.inline,
    AttachmentRow.sha256,
    AttachmentRow.blob_sha256,
).order_by(AttachmentRow.attachment_id)
_COPIES = _of_messages(
    MailboxCopyRow.message_id,
    MailboxCopyRow.mailbox_id,
    MailboxCopyRow.gmail_message_id,
    MailboxCopyRow.gmail_thread_id,
    MailboxCopyRow.labels,
    MailboxCopyRow.unread,
    MailboxCopyRow.trashed,
    MailboxCopyRow.deleted,
    MailboxCopyRow.update_time,
).order_by(MailboxCopyRow.mailbox_id)
_THREAD_LINKS = _of_messages(ThreadMessageRow.message_id, ThreadMessageRow.thread_id).order_by(
    ThreadMessageRow.thread_id
)


async def _views(session: AsyncSession, rows: list[Any]) -> list[MessageView]:
    if not rows:
        return []
    ids = [r.message_id for r in rows]
    participants: dict[str, list[ParticipantView]] = {}
    for p in await session.execute(_PARTICIPANTS, {"ids": ids}):
        participants.setdefault(p.message_id, []).append(
            ParticipantView(p.email, p.display_name, p.role, p.position)
        )
    attachments: dict[str, list[AttachmentView]] = {}
    for a in await session.execute(_ATTACHMENTS, {"ids": ids}):
        attachments.setdefault(a.message_id, []).append(
            AttachmentView(
                a.attachment_id,
                a.filename,
                a.content_type,
                a.size_bytes,
                a.content_id,
                a.inline,
                a.sha256 or a.blob_sha256,
            )
        )
    copies: dict[str, list[MailboxCopyView]] = {}
    for c in await session.execute(_COPIES, {"ids": ids}):
        copies.setdefault(c.message_id, []).append(
            MailboxCopyView(
                c.mailbox_id,
                c.gmail_message_id,
                c.gmail_thread_id,
                tuple(c.labels or ()),
                c.unread,
                c.trashed,
                c.deleted,
                c.update_time,
            )
        )
    threads: dict[str, list[str]] = {}
    for link in await session.execute(_THREAD_LINKS, {"ids": ids}):
        threads.setdefault(link.message_id, []).append(link.thread_id)
    return [
        MessageView(
            message_id=r.message_id,
            location_id=r.location_id,
            conversation_id=r.conversation_id,
            thread_ids=tuple(threads.get(r.message_id, ())),
            rfc_message_id=r.rfc_message_id,
            direction=r.direction,
            source=r.source,
            subject=r.subject,
            participants=tuple(participants.get(r.message_id, ())),
            text_body=r.text_body,
            html_body=r.html_body,
            attachments=tuple(attachments.get(r.message_id, ())),
            message_time=r.message_time,
            mailbox_copies=tuple(copies.get(r.message_id, ())),
            rule_id=r.rule_id,
            send_id=r.send_id,
            send_pending=r.send_pending,
        )
        for r in rows
    ]


async def last_feed_seq(session: AsyncSession, location_id: str) -> int:
    value = await session.scalar(
        select(LocationSequenceRow.last_seq).where(LocationSequenceRow.location_id == location_id)
    )
    return int(value or 0)


async def feed_after(session: AsyncSession, location_id: str, seq: int, *, limit: int) -> list[FeedEntry]:
    rows = (
        (
            await session.execute(
                select(SyncedFeedRow)
                .where(SyncedFeedRow.location_id == location_id, SyncedFeedRow.seq > seq)
                .order_by(SyncedFeedRow.seq)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    return [
        FeedEntry(
            r.seq,
            r.location_id,
            r.message_id,
            r.conversation_id,
            r.thread_id,
            r.contact_id,
            r.rfc_message_id,
            r.direction,
            r.source,
            r.rule_id,
            r.sync_time,
        )
        for r in rows
    ]


async def explain(
    session: AsyncSession,
    *,
    visible_locations: set[str] | None,
    rfc_message_id: str = "",
    mailbox_id: str = "",
    gmail_message_id: str = "",
) -> Explanation | None:
    """Every decision about the copies of a message, limited to the locations the caller may see (None: all).

    A message the caller may see no decision of is reported as unknown, so its existence does not leak."""
    if rfc_message_id:
        query = select(SeenMessageRow).where(
            SeenMessageRow.rfc_message_id == normalize_message_id(rfc_message_id)
        )
    else:
        query = select(SeenMessageRow).where(
            SeenMessageRow.mailbox_id == mailbox_id, SeenMessageRow.gmail_message_id == gmail_message_id
        )
    seen = (await session.execute(query.order_by(SeenMessageRow.first_seen))).scalars().all()
    if not seen:
        return None
    decisions = (
        (
            await session.execute(
                select(DecisionRow)
                .where(DecisionRow.seen_key.in_([s.seen_key for s in seen]))
                .order_by(DecisionRow.decide_time, DecisionRow.location_id)
            )
        )
        .scalars()
        .all()
    )
    visible = [d for d in decisions if visible_locations is None or d.location_id in visible_locations]
    if not visible:
        return None
    first = seen[0]
    return Explanation(
        rfc_message_id=first.rfc_message_id,
        subject=first.subject,
        participants=tuple(
            ParticipantView(
                p.get("email", ""), p.get("display_name", ""), p.get("role", ""), int(p.get("position", 0))
            )
            for p in first.participants or []
        ),
        decisions=tuple(
            DecisionView(
                d.location_id,
                d.synced,
                d.rule_id,
                d.reason,
                d.contact_id,
                d.conversation_id,
                d.message_id,
                d.decide_time,
            )
            for d in visible
        ),
    )
