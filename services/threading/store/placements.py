"""Rules in, rows out: what the store knows about a message (for the rules), and the idempotent writes of what the
rules decided (placements, echo links, CRM sends, Gmail state changes, and the explanation of every decision).

Every write is keyed (derived ids, unique keys, INSERT ... ON CONFLICT DO NOTHING), so a redelivered or
concurrently processed message changes nothing twice. Locations are written in sorted order so two transactions
that touch the same locations lock their feed counters in the same order (no deadlock on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.threading.domain.addresses import normalize_message_id
from services.threading.domain.model import (
    CrmSend,
    Decision,
    Direction,
    EchoLink,
    IncomingMessage,
    Knowledge,
    LocationDecision,
    Participant,
    Placement,
    Source,
    ThreadHome,
    gmail_thread_key,
)
from services.threading.domain.rules import place_crm_send
from services.threading.store.contacts import contacts_matching, create_sync_contact
from services.threading.store.models import (
    AttachmentRow,
    ConversationRow,
    CrmSendRow,
    DecisionRow,
    LocationSequenceRow,
    MailboxCopyRow,
    MessageReferenceRow,
    MessageRfcIdRow,
    MessageRow,
    ParticipantRow,
    SeenMessageRow,
    SyncedFeedRow,
    ThreadKeyRow,
    ThreadMessageRow,
    ThreadRow,
    derived_id,
)
from services.threading.store.sql import insert_many_new, insert_new


@dataclass(frozen=True)
class AttachmentInfo:
    attachment_id: str
    filename: str = ""
    content_type: str = ""
    size_bytes: int = 0
    content_id: str = ""
    inline: bool = False
    sha256: str = ""
    gmail_attachment_id: str = ""


@dataclass(frozen=True)
class MessageContent:
    """What is stored only for a message that syncs somewhere (R18)."""

    subject: str = ""
    text_body: str = ""
    html_body: str = ""
    body_truncated: bool = False
    attachments: tuple[AttachmentInfo, ...] = ()
    # Header date when it parsed, else Gmail's internal time.
    message_time: dt.datetime | None = None


@dataclass(frozen=True)
class GmailCopyState:
    labels: tuple[str, ...] = ()
    unread: bool = False
    trashed: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class SyncedMessage:
    """A message newly placed in a location: what `message.synced` and WatchMessages report."""

    location_id: str
    seq: int
    message_id: str
    conversation_id: str
    thread_id: str
    contact_id: str
    rfc_message_id: str
    direction: Direction
    source: Source
    rule_id: str
    sync_time: dt.datetime


@dataclass(frozen=True)
class CreatedContact:
    contact_id: str
    location_id: str
    email: str
    display_name: str
    assigned_user_id: str
    source_rfc_message_id: str
    create_time: dt.datetime


@dataclass(frozen=True)
class Applied:
    """What a decision changed, for the events the consumer stages in the same transaction."""

    synced: tuple[SyncedMessage, ...] = ()
    created_contacts: tuple[CreatedContact, ...] = ()


@dataclass(frozen=True)
class _Landing:
    message_id: str
    conversation_id: str
    contact_id: str
    synced: SyncedMessage | None
    created_contact: CreatedContact | None


def seen_key_of(message: IncomingMessage) -> str:
    if message.source is Source.BCC_DROP and message.bcc_drop is not None:
        return f"drop:{message.bcc_drop.drop_id}"
    return f"gmail:{message.mailbox_id}:{message.gmail_message_id}"


def considered_locations(message: IncomingMessage) -> list[str]:
    if message.source is Source.BCC_DROP:
        return [message.bcc_drop.location_id] if message.bcc_drop else []
    return sorted({c.location_id for c in message.connections})


async def load_knowledge(session: AsyncSession, message: IncomingMessage, key: str) -> Knowledge:
    """Everything the rules need about this message from the store, limited to the locations it may reach."""
    locations = considered_locations(message)
    contacts = await contacts_matching(session, locations, [p.email for p in message.participants])
    homes: list[ThreadHome] = []
    if locations and message.source is Source.GMAIL_SYNC and message.gmail_thread_id:
        by_gmail_thread = select(ThreadKeyRow.thread_id).where(
            ThreadKeyRow.location_id.in_(locations),
            ThreadKeyRow.key == gmail_thread_key(message.mailbox_id, message.gmail_thread_id),
        )
        homes += await _homes(session, by_gmail_thread, "gmail_thread")
    if locations and message.referenced_ids:
        parents = select(MessageRfcIdRow.message_id).where(
            MessageRfcIdRow.location_id.in_(locations),
            MessageRfcIdRow.rfc_message_id.in_(message.referenced_ids),
        )
        homes += await _homes(session, _threads_of(parents), "message_id")
    if locations and message.message_id:
        children = select(MessageReferenceRow.message_id).where(
            MessageReferenceRow.location_id.in_(locations),
            MessageReferenceRow.referenced_rfc_id == message.message_id,
        )
        homes += await _homes(session, _threads_of(children), "message_id")
    if locations:
        same = select(MessageRow.message_id).where(
            MessageRow.location_id.in_(locations), MessageRow.dedup_key == key
        )
        if message.message_id:
            # Also the email stored under another of its ids (a CRM send whose Message-ID Gmail replaced).
            same = same.union(
                select(MessageRfcIdRow.message_id).where(
                    MessageRfcIdRow.location_id.in_(locations),
                    MessageRfcIdRow.rfc_message_id == message.message_id,
                )
            )
        homes += await _homes(session, _threads_of(same), "same_message")
    return Knowledge(
        contacts=contacts,
        homes=tuple(homes),
        crm_sends=await _crm_sends(session, message),
        seen_message_ids=await _seen_ids(session, message.parent_ids),
    )


def _threads_of(message_ids: Select[Any]) -> Select[Any]:
    return select(ThreadMessageRow.thread_id).where(ThreadMessageRow.message_id.in_(message_ids))


async def _homes(session: AsyncSession, thread_ids: Select[Any], found_by: str) -> list[ThreadHome]:
    """The threads (with their conversation's contact) that the subquery names, in one statement."""
    rows = await session.execute(
        select(ThreadRow, ConversationRow.contact_id)
        .join(ConversationRow, ConversationRow.conversation_id == ThreadRow.conversation_id)
        .where(ThreadRow.thread_id.in_(thread_ids))
    )
    return [
        ThreadHome(
            thread.location_id,
            thread.conversation_id,
            contact_id,
            thread.thread_id,
            found_by,
            crm_started=thread.origin == "crm",
            create_time=thread.create_time,
        )
        for thread, contact_id in rows.all()
    ]


async def _crm_sends(session: AsyncSession, message: IncomingMessage) -> tuple[CrmSend, ...]:
    if message.source is not Source.GMAIL_SYNC or message.direction is not Direction.OUTBOUND:
        return ()
    condition = (CrmSendRow.state == "pending") | (CrmSendRow.gmail_message_id == message.gmail_message_id)
    if message.message_id:
        condition = (
            condition
            | (CrmSendRow.rfc_message_id == message.message_id)
            | (CrmSendRow.final_rfc_message_id == message.message_id)
        )
    rows = (
        (
            await session.execute(
                select(CrmSendRow).where(CrmSendRow.mailbox_id == message.mailbox_id, condition)
            )
        )
        .scalars()
        .all()
    )
    return tuple(
        CrmSend(
            r.send_id,
            r.location_id,
            r.mailbox_id,
            r.message_id,
            r.rfc_message_id,
            r.final_rfc_message_id,
            r.gmail_message_id,
            unresolved=r.state == "pending",
        )
        for r in rows
        if r.state != "failed"
    )


async def _seen_ids(session: AsyncSession, ids: tuple[str, ...]) -> frozenset[str]:
    if not ids:
        return frozenset()
    seen = await session.execute(
        select(SeenMessageRow.rfc_message_id).where(SeenMessageRow.rfc_message_id.in_(ids))
    )
    stored = await session.execute(
        select(MessageRfcIdRow.rfc_message_id).where(MessageRfcIdRow.rfc_message_id.in_(ids))
    )
    return frozenset(seen.scalars().all()) | frozenset(stored.scalars().all())


async def record_decision(
    session: AsyncSession,
    message: IncomingMessage,
    content: MessageContent,
    decision: Decision,
    *,
    now: dt.datetime,
    copy_state: GmailCopyState | None = None,
) -> Applied:
    """Writes what the rules decided (nothing for a wait): placements, an echo link, and every explanation."""
    landings: dict[str, _Landing] = {}
    for placement in sorted(decision.placements, key=lambda p: p.location_id):
        landings[placement.location_id] = await _land(
            session, message, content, placement, decision.message_key, now=now, copy_state=copy_state
        )
    if decision.echo is not None:
        await _link_echo(session, message, decision.echo, now=now, copy_state=copy_state)
    seen_key = seen_key_of(message)
    # R18: a subject is content, kept for explanations only when the copy synced somewhere.
    kept_subject = content.subject if decision.placements or decision.echo is not None else ""
    await _record_seen(
        session, seen_key, message, kept_subject, [d.location_id for d in decision.decisions], now
    )
    await _record_explanations(session, seen_key, decision.decisions, landings, decision.echo, now)
    return Applied(
        synced=tuple(x.synced for x in landings.values() if x.synced is not None),
        created_contacts=tuple(x.created_contact for x in landings.values() if x.created_contact is not None),
    )


async def _record_seen(
    session: AsyncSession,
    seen_key: str,
    message: IncomingMessage,
    subject: str,
    locations: list[str],
    now: dt.datetime,
) -> None:
    await insert_new(
        session,
        SeenMessageRow.__table__,
        {
            "seen_key": seen_key,
            "mailbox_id": message.mailbox_id,
            "gmail_message_id": message.gmail_message_id,
            "rfc_message_id": message.message_id,
            "subject": subject,
            "participants": [
                {
                    "email": p.email,
                    "display_name": p.display_name,
                    "role": p.role.value,
                    "position": p.position,
                }
                for p in message.participants
            ],
            "location_ids": sorted(set(locations)),
            "first_seen": now,
        },
    )


async def _record_explanations(
    session: AsyncSession,
    seen_key: str,
    decisions: tuple[LocationDecision, ...],
    landings: dict[str, _Landing],
    echo: EchoLink | None,
    now: dt.datetime,
) -> None:
    rows = []
    for item in decisions:
        landing = landings.get(item.location_id)
        message_id = landing.message_id if landing else ""
        conversation_id = landing.conversation_id if landing else ""
        if echo is not None and item.location_id == echo.location_id and item.synced:
            message_id = echo.message_id
            conversation_id = await _conversation_of(session, echo.message_id)
        rows.append(
            {
                "seen_key": seen_key,
                "location_id": item.location_id,
                "synced": item.synced,
                "rule_id": item.rule_id,
                "reason": item.reason,
                "contact_id": (landing.contact_id if landing else "") or item.contact_id,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "decide_time": now,
            }
        )
    await insert_many_new(session, DecisionRow.__table__, rows)


async def _conversation_of(session: AsyncSession, message_id: str) -> str:
    value = await session.scalar(
        select(MessageRow.conversation_id).where(MessageRow.message_id == message_id)
    )
    return value or ""


async def _land(
    session: AsyncSession,
    message: IncomingMessage,
    content: MessageContent,
    placement: Placement,
    key: str,
    *,
    now: dt.datetime,
    copy_state: GmailCopyState | None,
    send_id: str = "",
    send_pending: bool = False,
) -> _Landing:
    location = placement.location_id
    contact_id = placement.contact_id
    created_contact = None
    if placement.new_contact is not None:
        new = placement.new_contact
        contact_id, created = await create_sync_contact(
            session,
            location_id=location,
            email=new.email,
            display_name=new.display_name,
            assigned_user_id=new.assigned_user_id,
            now=now,
        )
        if created:
            created_contact = CreatedContact(
                contact_id,
                location,
                new.email,
                new.display_name,
                new.assigned_user_id,
                message.message_id,
                now,
            )
    thread_id, conversation_id, contact_id = await _resolve_thread(session, placement, contact_id, key, now)
    for alias in placement.thread.alias_keys:
        await insert_new(
            session, ThreadKeyRow.__table__, {"location_id": location, "key": alias, "thread_id": thread_id}
        )
    message_id = await _stored_as(session, location, message.message_id) or derived_id(
        "message", location, key
    )
    message_time = content.message_time or message.internal_time
    inserted = await insert_new(
        session,
        MessageRow.__table__,
        {
            "message_id": message_id,
            "location_id": location,
            "dedup_key": key,
            "conversation_id": conversation_id,
            "contact_id": contact_id,
            "rfc_message_id": message.message_id,
            "direction": placement.direction.value,
            "source": message.source.value,
            "subject": content.subject,
            "text_body": content.text_body,
            "html_body": content.html_body,
            "body_truncated": content.body_truncated,
            "message_time": message_time,
            "rule_id": placement.rule_id,
            "send_id": send_id,
            "send_pending": send_pending,
            "create_time": now,
        },
    )
    synced = None
    if inserted:
        await _write_message_parts(session, message, content, location, message_id)
        await session.execute(
            update(ConversationRow)
            .where(ConversationRow.conversation_id == conversation_id)
            .values(
                message_count=ConversationRow.message_count + 1,
                last_message_time=case(
                    (ConversationRow.last_message_time < message_time, message_time),
                    else_=ConversationRow.last_message_time,
                ),
            )
        )
        await _link_thread(session, thread_id, message_id, message_time)
        seq = await _next_seq(session, location)
        synced = SyncedMessage(
            location,
            seq,
            message_id,
            conversation_id,
            thread_id,
            contact_id,
            message.message_id,
            placement.direction,
            message.source,
            placement.rule_id,
            now,
        )
        await insert_new(session, SyncedFeedRow.__table__, _feed_values(synced))
    else:
        stored = await session.get(MessageRow, message_id)
        assert stored is not None
        # One email is one message of one conversation; a copy in another mailbox also links its thread.
        if stored.conversation_id == conversation_id:
            await _link_thread(session, thread_id, message_id, stored.message_time)
        conversation_id, contact_id = stored.conversation_id, stored.contact_id
    if message.source is Source.GMAIL_SYNC:
        await _add_mailbox_copy(session, message, location, message_id, now, copy_state)
    return _Landing(message_id, conversation_id, contact_id, synced, created_contact)


async def _stored_as(session: AsyncSession, location: str, rfc_message_id: str) -> str | None:
    """The message already stored in the location under this Message-ID, its own or an alias (R15)."""
    if not rfc_message_id:
        return None
    return await session.scalar(
        select(MessageRfcIdRow.message_id).where(
            MessageRfcIdRow.location_id == location, MessageRfcIdRow.rfc_message_id == rfc_message_id
        )
    )


async def _link_thread(session: AsyncSession, thread_id: str, message_id: str, when: dt.datetime) -> None:
    await insert_new(
        session,
        ThreadMessageRow.__table__,
        {"thread_id": thread_id, "message_id": message_id, "message_time": when},
    )


def _feed_values(synced: SyncedMessage) -> dict[str, object]:
    return {
        "location_id": synced.location_id,
        "seq": synced.seq,
        "message_id": synced.message_id,
        "conversation_id": synced.conversation_id,
        "thread_id": synced.thread_id,
        "contact_id": synced.contact_id,
        "rfc_message_id": synced.rfc_message_id,
        "direction": synced.direction.value,
        "source": synced.source.value,
        "rule_id": synced.rule_id,
        "sync_time": synced.sync_time,
    }


async def _write_message_parts(
    session: AsyncSession, message: IncomingMessage, content: MessageContent, location: str, message_id: str
) -> None:
    await insert_many_new(
        session,
        ParticipantRow.__table__,
        [
            {
                "message_id": message_id,
                "role": p.role.value,
                "position": p.position,
                "email": p.email,
                "display_name": p.display_name,
            }
            for p in _unique_participants(message.participants)
        ],
    )
    if message.message_id:
        await insert_new(
            session,
            MessageRfcIdRow.__table__,
            {"location_id": location, "rfc_message_id": message.message_id, "message_id": message_id},
        )
    await insert_many_new(
        session,
        MessageReferenceRow.__table__,
        [
            {"location_id": location, "referenced_rfc_id": r, "message_id": message_id}
            for r in message.referenced_ids
        ],
    )
    drop_id = message.bcc_drop.drop_id if message.bcc_drop else ""
    await insert_many_new(
        session,
        AttachmentRow.__table__,
        [
            {
                "message_id": message_id,
                "attachment_id": a.attachment_id,
                "location_id": location,
                "filename": a.filename,
                "content_type": a.content_type,
                "size_bytes": a.size_bytes,
                "content_id": a.content_id,
                "inline": a.inline,
                "sha256": a.sha256,
                "gmail_attachment_id": a.gmail_attachment_id,
                "source_mailbox_id": message.mailbox_id if message.source is Source.GMAIL_SYNC else "",
                "source_gmail_message_id": message.gmail_message_id
                if message.source is Source.GMAIL_SYNC
                else "",
                "source_drop_id": drop_id,
            }
            for a in content.attachments
        ],
    )


def _unique_participants(participants: tuple[Participant, ...]) -> list[Participant]:
    seen: dict[tuple[str, int], Participant] = {}
    for p in participants:
        seen.setdefault((p.role.value, p.position), p)
    return list(seen.values())


async def _resolve_thread(
    session: AsyncSession, placement: Placement, contact_id: str, key: str, now: dt.datetime
) -> tuple[str, str, str]:
    """(thread, conversation, contact) of a placement; a new thread is created at most once per key."""
    location = placement.location_id
    target = placement.thread
    if target.existing_thread_id:
        found = await _thread_with_contact(session, location, target.existing_thread_id)
        if found is not None:
            return found
    new_key = target.new_key or f"chain:{key}"
    mapped = await _mapped_thread(session, location, new_key)
    if mapped is None:
        candidate = derived_id("thread", location, new_key)
        if await insert_new(
            session, ThreadKeyRow.__table__, {"location_id": location, "key": new_key, "thread_id": candidate}
        ):
            conversation_id = await _ensure_conversation(session, location, contact_id, now)
            origin = new_key.split(":", 1)[0]
            await insert_new(
                session,
                ThreadRow.__table__,
                {
                    "thread_id": candidate,
                    "location_id": location,
                    "conversation_id": conversation_id,
                    "origin": origin,
                    "create_time": now,
                },
            )
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.conversation_id == conversation_id)
                .values(thread_count=ConversationRow.thread_count + 1)
            )
            return candidate, conversation_id, contact_id
        mapped = await _mapped_thread(session, location, new_key)
    assert mapped is not None
    found = await _thread_with_contact(session, location, mapped)
    assert found is not None
    return found


async def _mapped_thread(session: AsyncSession, location: str, key: str) -> str | None:
    return await session.scalar(
        select(ThreadKeyRow.thread_id).where(ThreadKeyRow.location_id == location, ThreadKeyRow.key == key)
    )


async def _thread_with_contact(
    session: AsyncSession, location: str, thread_id: str
) -> tuple[str, str, str] | None:
    row = (
        await session.execute(
            select(ThreadRow.thread_id, ThreadRow.conversation_id, ConversationRow.contact_id)
            .join(ConversationRow, ConversationRow.conversation_id == ThreadRow.conversation_id)
            .where(ThreadRow.thread_id == thread_id, ThreadRow.location_id == location)
        )
    ).first()
    return (row[0], row[1], row[2]) if row else None


async def _ensure_conversation(
    session: AsyncSession, location: str, contact_id: str, now: dt.datetime
) -> str:
    conversation_id = derived_id("conversation", location, contact_id)
    await insert_new(
        session,
        ConversationRow.__table__,
        {
            "conversation_id": conversation_id,
            "location_id": location,
            "contact_id": contact_id,
            "create_time": now,
            "last_message_time": now.replace(year=1970, month=1, day=1),
            "message_count": 0,
            "thread_count": 0,
        },
    )
    return conversation_id


async def _next_seq(session: AsyncSession, location: str) -> int:
    """The location's next feed position; the row lock it takes is held to commit, so positions commit in order."""
    bump = (
        update(LocationSequenceRow)
        .where(LocationSequenceRow.location_id == location)
        .values(last_seq=LocationSequenceRow.last_seq + 1)
        .returning(LocationSequenceRow.last_seq)
    )
    value = (await session.execute(bump)).scalar_one_or_none()
    if value is None:
        await insert_new(session, LocationSequenceRow.__table__, {"location_id": location, "last_seq": 0})
        value = (await session.execute(bump)).scalar_one()
    return int(value)


async def _add_mailbox_copy(
    session: AsyncSession,
    message: IncomingMessage,
    location: str,
    message_id: str,
    now: dt.datetime,
    copy_state: GmailCopyState | None,
) -> None:
    state = copy_state or GmailCopyState(
        labels=tuple(sorted(message.labels)), unread="UNREAD" in message.labels
    )
    await insert_new(
        session,
        MailboxCopyRow.__table__,
        {
            "message_id": message_id,
            "mailbox_id": message.mailbox_id,
            "location_id": location,
            "gmail_message_id": message.gmail_message_id,
            "gmail_thread_id": message.gmail_thread_id,
            "labels": list(state.labels),
            "unread": state.unread,
            "trashed": state.trashed or "TRASH" in state.labels,
            "deleted": state.deleted,
            "state_history_id": message.history_id,
            "update_time": now,
        },
    )


async def _link_echo(
    session: AsyncSession,
    message: IncomingMessage,
    echo: EchoLink,
    *,
    now: dt.datetime,
    copy_state: GmailCopyState | None,
) -> None:
    """The Gmail copy of a CRM send: its mailbox copy, Gmail thread and Message-ID now point at the stored message."""
    stored = await session.get(MessageRow, echo.message_id)
    if stored is None:
        return
    await _add_mailbox_copy(session, message, stored.location_id, stored.message_id, now, copy_state)
    if message.message_id:
        await insert_new(
            session,
            MessageRfcIdRow.__table__,
            {
                "location_id": stored.location_id,
                "rfc_message_id": message.message_id,
                "message_id": stored.message_id,
            },
        )
    await _alias_gmail_thread(session, stored, message.mailbox_id, message.gmail_thread_id)
    await session.execute(
        update(CrmSendRow)
        .where(CrmSendRow.send_id == echo.send_id, CrmSendRow.gmail_message_id == "")
        .values(gmail_message_id=message.gmail_message_id, gmail_thread_id=message.gmail_thread_id)
    )


async def _alias_gmail_thread(
    session: AsyncSession, stored: MessageRow, mailbox_id: str, gmail_thread_id: str
) -> None:
    if not gmail_thread_id:
        return
    thread_id = await session.scalar(
        select(ThreadMessageRow.thread_id).where(ThreadMessageRow.message_id == stored.message_id).limit(1)
    )
    if thread_id:
        await insert_new(
            session,
            ThreadKeyRow.__table__,
            {
                "location_id": stored.location_id,
                "key": gmail_thread_key(mailbox_id, gmail_thread_id),
                "thread_id": thread_id,
            },
        )


@dataclass(frozen=True)
class CrmSendInput:
    """A CRM send as outbound announced it (PendingSend)."""

    send_id: str
    location_id: str
    mailbox_id: str
    user_id: str
    rfc_message_id: str
    participants: tuple[Participant, ...]
    create_time: dt.datetime
    conversation_id: str = ""
    thread_id: str = ""
    gmail_thread_id: str = ""
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()


def _as_message(send: CrmSendInput) -> IncomingMessage:
    return IncomingMessage(
        mailbox_id=send.mailbox_id,
        gmail_message_id="",
        gmail_thread_id=send.gmail_thread_id,
        rfc_message_id=send.rfc_message_id,
        direction=Direction.OUTBOUND,
        source=Source.CRM_SEND,
        internal_time=send.create_time,
        participants=send.participants,
        in_reply_to=send.in_reply_to,
        references=send.references,
    )


def crm_message_key(send: CrmSendInput) -> str:
    rfc = normalize_message_id(send.rfc_message_id)
    return f"mid:{rfc}" if rfc else f"send:{send.send_id}"


async def record_pending_send(
    session: AsyncSession, send: CrmSendInput, content: MessageContent, *, now: dt.datetime
) -> Applied:
    """R6: records a CRM send in its location's conversation at once (once, whatever the redeliveries)."""
    if not await insert_new(
        session,
        CrmSendRow.__table__,
        {
            "send_id": send.send_id,
            "location_id": send.location_id,
            "mailbox_id": send.mailbox_id,
            "rfc_message_id": normalize_message_id(send.rfc_message_id),
            "gmail_thread_id": send.gmail_thread_id,
            "state": "pending",
            "create_time": now,
        },
    ):
        return Applied()
    contact_id = ""
    conversation_id = ""
    if send.conversation_id:
        row = await session.get(ConversationRow, send.conversation_id)
        if row is not None and row.location_id == send.location_id:
            conversation_id, contact_id = row.conversation_id, row.contact_id
    thread_id = ""
    if send.thread_id and await _thread_with_contact(session, send.location_id, send.thread_id):
        thread_id = send.thread_id
    contacts = await contacts_matching(session, [send.location_id], [p.email for p in send.participants])
    decision = place_crm_send(
        send_id=send.send_id,
        location_id=send.location_id,
        recipients=send.participants,
        contacts=contacts,
        conversation_id=conversation_id,
        contact_id=contact_id,
        thread_id=thread_id,
        mailbox_id=send.mailbox_id,
        gmail_thread_id=send.gmail_thread_id,
    )
    message = _as_message(send)
    key = crm_message_key(send)
    landing = None
    if decision.placement is not None:
        landing = await _land(
            session,
            message,
            content,
            decision.placement,
            key,
            now=now,
            copy_state=None,
            send_id=send.send_id,
            send_pending=True,
        )
        await session.execute(
            update(CrmSendRow).where(CrmSendRow.send_id == send.send_id).values(message_id=landing.message_id)
        )
    seen_key = f"send:{send.send_id}"
    kept_subject = content.subject if landing is not None else ""  # R18, as in record_decision
    await _record_seen(session, seen_key, message, kept_subject, [send.location_id], now)
    await _record_explanations(
        session, seen_key, (decision,), {send.location_id: landing} if landing else {}, None, now
    )
    if landing is None or landing.synced is None:
        return Applied()
    return Applied(synced=(landing.synced,))


async def record_send_sent(
    session: AsyncSession,
    send: CrmSendInput,
    content: MessageContent,
    *,
    gmail_message_id: str,
    gmail_thread_id: str,
    final_rfc_message_id: str,
    now: dt.datetime,
) -> Applied:
    """Gmail accepted the send: its ids now recognise the echo (R6); works even if `pending` was never seen."""
    applied = await record_pending_send(session, send, content, now=now)
    row = await session.get(CrmSendRow, send.send_id)
    assert row is not None
    final = normalize_message_id(final_rfc_message_id)
    row.state = "sent"
    row.gmail_message_id = gmail_message_id
    row.gmail_thread_id = gmail_thread_id
    row.final_rfc_message_id = final
    if row.message_id:
        stored = await session.get(MessageRow, row.message_id)
        if stored is not None:
            stored.send_pending = False
            if final:
                # Gmail's id is the one every copy carries from now on: it becomes the message's id, ours an alias.
                stored.rfc_message_id = final
                await insert_new(
                    session,
                    MessageRfcIdRow.__table__,
                    {
                        "location_id": stored.location_id,
                        "rfc_message_id": final,
                        "message_id": stored.message_id,
                    },
                )
            await _alias_gmail_thread(session, stored, send.mailbox_id, gmail_thread_id)
            await insert_new(
                session,
                MailboxCopyRow.__table__,
                {
                    "message_id": stored.message_id,
                    "mailbox_id": send.mailbox_id,
                    "location_id": stored.location_id,
                    "gmail_message_id": gmail_message_id,
                    "gmail_thread_id": gmail_thread_id,
                    "labels": ["SENT"],
                    "unread": False,
                    "trashed": False,
                    "deleted": False,
                    "state_history_id": 0,
                    "update_time": now,
                },
            )
    await session.flush()
    return applied


async def record_send_failed(session: AsyncSession, send_id: str, reason: str) -> None:
    """The send certainly did not go out: it stops holding the mailbox's SENT copies (R6) and is marked failed."""
    row = await session.get(CrmSendRow, send_id)
    if row is None or row.state == "sent":
        return
    row.state = "failed"
    row.failure_reason = reason
    if row.message_id:
        stored = await session.get(MessageRow, row.message_id)
        if stored is not None:
            stored.send_pending = False
    await session.flush()


async def apply_gmail_change(
    session: AsyncSession,
    *,
    mailbox_id: str,
    gmail_message_id: str,
    history_id: int,
    now: dt.datetime,
    labels: tuple[str, ...] | None = None,
    labels_added: tuple[str, ...] = (),
    labels_removed: tuple[str, ...] = (),
    deleted: bool = False,
) -> int:
    """R17: records the Gmail state of every stored copy (read, trashed, deleted); never deletes a message.

    A change older than the copy's state (a lower history id) is ignored. Returns how many copies changed."""
    copies = (
        (
            await session.execute(
                select(MailboxCopyRow).where(
                    MailboxCopyRow.mailbox_id == mailbox_id,
                    MailboxCopyRow.gmail_message_id == gmail_message_id,
                )
            )
        )
        .scalars()
        .all()
    )
    changed = 0
    for copy in copies:
        if history_id and copy.state_history_id and history_id < copy.state_history_id:
            continue
        current = set(labels) if labels is not None else set(copy.labels or [])
        current |= set(labels_added)
        current -= set(labels_removed)
        copy.labels = sorted(current)
        copy.unread = "UNREAD" in current
        copy.trashed = "TRASH" in current
        copy.deleted = copy.deleted or deleted
        copy.state_history_id = max(copy.state_history_id, history_id)
        copy.update_time = now
        changed += 1
    await session.flush()
    return changed


async def was_seen(session: AsyncSession, mailbox_id: str, gmail_message_id: str) -> bool:
    found = await session.scalar(
        select(SeenMessageRow.seen_key).where(
            SeenMessageRow.mailbox_id == mailbox_id, SeenMessageRow.gmail_message_id == gmail_message_id
        )
    )
    return found is not None


async def copy_decided(session: AsyncSession, seen_key: str) -> bool:
    """Whether the rules already decided this copy (a mailbox's Gmail message, or one BCC drop)."""
    return await session.get(SeenMessageRow, seen_key) is not None
