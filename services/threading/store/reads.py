"""The queries the read API answers from, always filtered by location (another location's ids find nothing), with
keyset pagination (a page of a 10,000-message conversation costs one index range scan)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Boolean, String, bindparam, cast, literal, null, select, union_all
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
    # Records of the same email merged into this message (R6): their ids read as this message.
    superseded_message_ids: tuple[str, ...] = ()


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
    revised: bool = False
    supersedes_message_id: str = ""


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
                MessageRow.superseded_by == "",
            )
        )
        time_column, id_column = ThreadMessageRow.message_time, ThreadMessageRow.message_id
    else:
        query = select(*_MESSAGE_COLUMNS).where(
            MessageRow.conversation_id == bindparam("key"),
            MessageRow.location_id == bindparam("location"),
            MessageRow.superseded_by == "",
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


_MESSAGE_BY_ID = select(*_MESSAGE_COLUMNS, MessageRow.superseded_by).where(
    MessageRow.message_id == bindparam("id")
)
# A merge always names a survivor that is not itself superseded; the bound only guards against a broken row.
_MAX_SUPERSEDED_HOPS = 4


async def get_message(session: AsyncSession, location_id: str, message_id: str) -> MessageView | None:
    """The message with this id; the id of a record merged into another message reads as that message (R6)."""
    for _ in range(_MAX_SUPERSEDED_HOPS):
        row = (await session.execute(_MESSAGE_BY_ID, {"id": message_id})).first()
        if row is None or row.location_id != location_id:
            return None
        if not row.superseded_by:
            return (await _views(session, [row]))[0]
        message_id = row.superseded_by
    return None


def _children() -> Any:
    """Everything a page's messages carry (participants, attachments, mailbox copies, threads) in one statement:
    one UNION ALL branch per kind, each filling its own columns (one round trip instead of four)."""
    ids = bindparam("ids", expanding=True)

    def empty(type_: Any) -> Any:
        return cast(null(), type_)

    text = String()

    def branch(kind: str, message_id: Any, where: Any, **columns: Any) -> Any:
        values = {
            "a": empty(text),
            "b": empty(text),
            "c": empty(text),
            "d": empty(text),
            "e": empty(text),
            "f": empty(text),
            "n": empty(BigInteger()),
            "flag1": empty(Boolean()),
            "flag2": empty(Boolean()),
            "flag3": empty(Boolean()),
            "when": empty(MailboxCopyRow.update_time.type),
            "labels": empty(MailboxCopyRow.labels.type),
        }
        values.update(columns)
        return select(
            literal(kind, text).label("kind"),
            message_id.label("message_id"),
            *[value.label(name) for name, value in values.items()],
        ).where(where.in_(ids))

    # The copies first: a UNION's result columns take their types (datetime, JSON) from its first branch.
    return union_all(
        branch(
            "copy",
            MailboxCopyRow.message_id,
            MailboxCopyRow.message_id,
            a=MailboxCopyRow.mailbox_id,
            b=MailboxCopyRow.gmail_message_id,
            c=MailboxCopyRow.gmail_thread_id,
            flag1=MailboxCopyRow.unread,
            flag2=MailboxCopyRow.trashed,
            flag3=MailboxCopyRow.deleted,
            when=MailboxCopyRow.update_time,
            labels=MailboxCopyRow.labels,
        ),
        branch(
            "participant",
            ParticipantRow.message_id,
            ParticipantRow.message_id,
            a=ParticipantRow.email,
            b=ParticipantRow.display_name,
            c=ParticipantRow.role,
            n=cast(ParticipantRow.position, BigInteger()),
        ),
        branch(
            "attachment",
            AttachmentRow.message_id,
            AttachmentRow.message_id,
            a=AttachmentRow.attachment_id,
            b=AttachmentRow.filename,
            c=AttachmentRow.content_type,
            d=AttachmentRow.content_id,
            e=AttachmentRow.sha256,
            f=AttachmentRow.blob_sha256,
            n=AttachmentRow.size_bytes,
            flag1=AttachmentRow.inline,
        ),
        branch(
            "thread",
            ThreadMessageRow.message_id,
            ThreadMessageRow.message_id,
            a=ThreadMessageRow.thread_id,
        ),
        branch("superseded", MessageRow.superseded_by, MessageRow.superseded_by, a=MessageRow.message_id),
    )


_CHILDREN = _children()


async def _views(session: AsyncSession, rows: list[Any]) -> list[MessageView]:
    if not rows:
        return []
    participants: dict[str, list[ParticipantView]] = {}
    attachments: dict[str, list[AttachmentView]] = {}
    copies: dict[str, list[MailboxCopyView]] = {}
    threads: dict[str, list[str]] = {}
    superseded: dict[str, list[str]] = {}
    for c in await session.execute(_CHILDREN, {"ids": [r.message_id for r in rows]}):
        if c.kind == "participant":
            participants.setdefault(c.message_id, []).append(ParticipantView(c.a, c.b, c.c, int(c.n)))
        elif c.kind == "attachment":
            attachments.setdefault(c.message_id, []).append(
                AttachmentView(c.a, c.b, c.c, int(c.n), c.d, bool(c.flag1), c.e or c.f)
            )
        elif c.kind == "copy":
            copies.setdefault(c.message_id, []).append(
                MailboxCopyView(
                    c.a, c.b, c.c, tuple(c.labels or ()), bool(c.flag1), bool(c.flag2), bool(c.flag3), c.when
                )
            )
        elif c.kind == "thread":
            threads.setdefault(c.message_id, []).append(c.a)
        else:
            superseded.setdefault(c.message_id, []).append(c.a)
    for found in participants.values():
        found.sort(key=lambda p: (p.role, p.position))
    for attached in attachments.values():
        attached.sort(key=lambda a: a.attachment_id)
    for held in copies.values():
        held.sort(key=lambda c: c.mailbox_id)
    for linked in threads.values():
        linked.sort()
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
            superseded_message_ids=tuple(sorted(superseded.get(r.message_id, ()))),
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
            r.revised,
            r.supersedes_message_id,
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
        # Copies that synced nowhere keep no subject (R18): take it from one that did.
        subject=next((s.subject for s in seen if s.subject), ""),
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


@dataclass(frozen=True)
class RefusedDropView:
    drop_id: str
    rfc_message_id: str
    participants: tuple[ParticipantView, ...]
    reason: str
    decide_time: dt.datetime


_DROP_PREFIX = "drop:"


async def refused_drops(
    session: AsyncSession, location_id: str, *, limit: int, before: tuple[dt.datetime, str] | None = None
) -> list[RefusedDropView]:
    """BCC drops of the location that synced nowhere (R9), newest first, keyset-paged by (decide time, key)."""
    query = (
        select(DecisionRow.seen_key, DecisionRow.reason, DecisionRow.decide_time, SeenMessageRow)
        .join(SeenMessageRow, SeenMessageRow.seen_key == DecisionRow.seen_key)
        .where(
            DecisionRow.location_id == location_id,
            DecisionRow.rule_id == "R9",
            DecisionRow.synced.is_(False),
            DecisionRow.seen_key.startswith(_DROP_PREFIX),
        )
    )
    if before is not None:
        when, key = before
        query = query.where(
            (DecisionRow.decide_time < when)
            | ((DecisionRow.decide_time == when) & (DecisionRow.seen_key < key))
        )
    rows = (
        await session.execute(
            query.order_by(DecisionRow.decide_time.desc(), DecisionRow.seen_key.desc()).limit(limit)
        )
    ).all()
    return [
        RefusedDropView(
            drop_id=seen_key.removeprefix(_DROP_PREFIX),
            rfc_message_id=seen.rfc_message_id,
            participants=tuple(
                ParticipantView(
                    p.get("email", ""),
                    p.get("display_name", ""),
                    p.get("role", ""),
                    int(p.get("position", 0)),
                )
                for p in seen.participants or []
            ),
            reason=reason,
            decide_time=decide_time,
        )
        for seen_key, reason, decide_time, seen in rows
    ]
