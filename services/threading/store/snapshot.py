"""Loads what a batch of operations can reach into a `StoreView`, in a fixed number of queries whatever the batch's
size: the keys are derived from the operations up front (the same derivations the placement code looks up later),
then fetched with one statement per kind of row, in three rounds (the second needs the CRM sends of the first,
the third the messages the first two found).

Every statement filters one indexed column with an expanding IN and the exact (location, key) pairs are kept in
Python: an IN on both columns of a two-column index makes SQLite probe every combination. Messages are looked up
by id, since a message's id is derived from its location and R15 key (`models.derived_id`), so "the message with
this key in this location" is "the message with this id".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from services.threading.domain.addresses import normalize_email, normalize_message_id
from services.threading.domain.model import (
    Direction,
    IncomingMessage,
    Role,
    Source,
    gmail_thread_key,
    message_key,
)
from services.threading.store.contacts import sync_contact_id
from services.threading.store.models import (
    ContactEmailRow,
    ContactRow,
    ConversationRow,
    CrmSendRow,
    MailboxCopyRow,
    MessageReferenceRow,
    MessageRfcIdRow,
    MessageRow,
    SeenMessageRow,
    ThreadKeyRow,
    ThreadMessageRow,
    ThreadRow,
    derived_id,
)
from services.threading.store.operations import (
    ChangeGmailState,
    Operation,
    PlaceMessage,
    RecordPendingSend,
    RecordSendFailed,
    RecordSent,
)
from services.threading.store.values import (
    CrmSendInput,
    considered_locations,
    crm_message_key,
    seen_key_of,
)
from services.threading.store.view import (
    ContactHit,
    CopyState,
    MessageState,
    SendState,
    StoreView,
    ThreadState,
)


def new_thread_keys(message: IncomingMessage, key: str) -> list[str]:
    """The keys a new thread of this message may be created under (R4's `ThreadTarget.new_key` or the chain)."""
    keys = [f"chain:{key}"]
    if message.source is Source.GMAIL_SYNC and message.gmail_thread_id:
        keys.append(gmail_thread_key(message.mailbox_id, message.gmail_thread_id))
    return keys


def send_thread_keys(send: CrmSendInput, gmail_thread_id: str = "") -> list[str]:
    """The keys a CRM send's thread may be created or aliased under (R6)."""
    keys = [f"crm:{send.send_id}", f"chain:{crm_message_key(send)}"]
    for thread in (send.gmail_thread_id, gmail_thread_id):
        if thread and send.mailbox_id:
            keys.append(gmail_thread_key(send.mailbox_id, thread))
    return keys


@dataclass
class _Wanted:
    """The keys a batch can look up, by kind of row."""

    seen_keys: set[str] = field(default_factory=set)
    known_rfc_ids: set[str] = field(default_factory=set)
    contact_locations: set[str] = field(default_factory=set)
    contact_emails: set[str] = field(default_factory=set)
    contact_ids: set[tuple[str, str]] = field(default_factory=set)
    thread_keys: set[tuple[str, str]] = field(default_factory=set)
    thread_ids: set[str] = field(default_factory=set)
    rfc_ids: set[tuple[str, str]] = field(default_factory=set)
    references: set[tuple[str, str]] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    conversation_ids: set[str] = field(default_factory=set)
    send_ids: set[str] = field(default_factory=set)
    # SENT copies look for the CRM sends of their mailbox (R6): pending ones, or ones carrying their ids.
    send_mailboxes: set[str] = field(default_factory=set)
    send_gmail_ids: set[str] = field(default_factory=set)
    send_rfc_ids: set[str] = field(default_factory=set)
    sent_copies: list[IncomingMessage] = field(default_factory=list)
    gmail_copies: set[tuple[str, str]] = field(default_factory=set)

    def add_message(self, message: IncomingMessage) -> None:
        key = message_key(message)
        locations = considered_locations(message)
        self.seen_keys.add(seen_key_of(message))
        self.known_rfc_ids.update(message.parent_ids)
        self._contacts(locations, message)
        if message.source is Source.BCC_DROP and message.bcc_drop is not None:
            to = message.with_role(Role.TO)
            if to:
                location = message.bcc_drop.location_id
                self.contact_ids.add((location, sync_contact_id(location, to[0].email)))
        for location in locations:
            self.thread_keys.update((location, k) for k in new_thread_keys(message, key))
            self.rfc_ids.update((location, rfc) for rfc in message.referenced_ids)
            self.message_ids.add(derived_id("message", location, key))
            if message.message_id:
                self.rfc_ids.add((location, message.message_id))
                self.references.add((location, message.message_id))
        if message.source is Source.GMAIL_SYNC and message.direction is Direction.OUTBOUND:
            self.send_mailboxes.add(message.mailbox_id)
            self.send_gmail_ids.add(message.gmail_message_id)
            if message.message_id:
                self.send_rfc_ids.add(message.message_id)
            self.sent_copies.append(message)

    def add_send(self, send: CrmSendInput, *, final_rfc: str = "", gmail_thread_id: str = "") -> None:
        message = send.as_message()
        location = send.location_id
        self.send_ids.add(send.send_id)
        self._contacts([location], message)
        if send.conversation_id:
            self.conversation_ids.add(send.conversation_id)
        if send.thread_id:
            self.thread_ids.add(send.thread_id)
        self.thread_keys.update((location, k) for k in send_thread_keys(send, gmail_thread_id))
        self.message_ids.add(derived_id("message", location, crm_message_key(send)))
        for rfc in (message.message_id, normalize_message_id(final_rfc)):
            if rfc:
                self.rfc_ids.add((location, rfc))

    def add_sends_found(self, sends: Iterable[SendState]) -> None:
        """What a recorded CRM send adds to the lookups: its message, and where its echo links (R6)."""
        for send in sends:
            if send.message_id:
                self.message_ids.add(send.message_id)
            for copy in self.sent_copies:
                if copy.mailbox_id != send.mailbox_id:
                    continue
                if copy.gmail_thread_id:
                    gmail_key = gmail_thread_key(copy.mailbox_id, copy.gmail_thread_id)
                    self.thread_keys.add((send.location_id, gmail_key))
                if copy.message_id:
                    self.rfc_ids.add((send.location_id, copy.message_id))

    def _contacts(self, locations: Iterable[str], message: IncomingMessage) -> None:
        self.contact_locations.update(locations)
        self.contact_emails.update(normalize_email(p.email) for p in message.participants if p.email)


async def load_view(conn: AsyncConnection, operations: Sequence[Operation]) -> StoreView:
    """The rows the operations can reach, in three rounds of queries."""
    wanted = _Wanted()
    for op in operations:
        if isinstance(op, PlaceMessage):
            wanted.add_message(op.message)
        elif isinstance(op, RecordSent):
            wanted.add_send(op.send, final_rfc=op.final_rfc_message_id, gmail_thread_id=op.gmail_thread_id)
            if op.gmail_message_id:
                # Its Sent copy may have been placed before this answer (R5): merged into the send's message.
                wanted.gmail_copies.add((op.send.mailbox_id, op.gmail_message_id))
        elif isinstance(op, RecordPendingSend):
            wanted.add_send(op.send)
        elif isinstance(op, RecordSendFailed):
            wanted.send_ids.add(op.send_id)
        elif isinstance(op, ChangeGmailState):
            wanted.gmail_copies.add((op.mailbox_id, op.gmail_message_id))
    view = StoreView()
    # Round 1: what the operations name directly.
    await _load_seen(conn, view, wanted)
    await _load_contacts(conn, view, wanted)
    sends = await _load_sends(conn, view, wanted)
    wanted.add_sends_found(sends)
    await _load_conversations(conn, view, wanted.conversation_ids)
    await _load_threads_by_id(conn, view, wanted.thread_ids)
    copied_messages = await _load_copies_by_gmail_id(conn, view, wanted.gmail_copies)
    # Round 2: keys, including those of the CRM sends found.
    await _load_thread_keys(conn, view, wanted.thread_keys)
    found_messages = await _load_rfc_ids(conn, view, wanted.rfc_ids)
    found_messages |= await _load_references(conn, view, wanted.references)
    # Round 3: the messages found, their threads and their mailbox copies.
    message_ids = wanted.message_ids | found_messages | copied_messages
    await _load_messages(conn, view, message_ids)
    await _load_message_threads(conn, view, set(view.messages))
    await _load_copies_of_messages(conn, view, set(view.messages))
    return view


async def _rows(conn: AsyncConnection, statement: Any, values: Iterable[Any] | None = None) -> list[Any]:
    if values is not None:
        return list((await conn.execute(statement, {"values": sorted(values)})).all())
    return list((await conn.execute(statement)).all())


def _in(column: Any) -> Any:
    return column.in_(bindparam("values", expanding=True))


# The statements, built once; their compiled SQL is cached by SQLAlchemy across batches.
_SEEN_BY_KEY = select(
    SeenMessageRow.seen_key, SeenMessageRow.mailbox_id, SeenMessageRow.gmail_message_id
).where(_in(SeenMessageRow.seen_key))
_SEEN_BY_GMAIL_ID = select(SeenMessageRow.mailbox_id, SeenMessageRow.gmail_message_id).where(
    _in(SeenMessageRow.gmail_message_id)
)
_KNOWN_RFC_IDS = union(
    select(SeenMessageRow.rfc_message_id.label("rfc")).where(_in(SeenMessageRow.rfc_message_id)),
    select(MessageRfcIdRow.rfc_message_id.label("rfc")).where(_in(MessageRfcIdRow.rfc_message_id)),
)
_CONTACTS_BY_EMAIL = (
    select(
        ContactEmailRow.location_id,
        ContactEmailRow.normalized_email,
        ContactRow.contact_id,
        ContactRow.create_time,
        ContactRow.assigned_user_id,
    )
    .join(
        ContactRow,
        and_(
            ContactRow.location_id == ContactEmailRow.location_id,
            ContactRow.contact_id == ContactEmailRow.contact_id,
        ),
    )
    .where(_in(ContactEmailRow.normalized_email), ContactRow.deleted.is_(False))
)
# Only a batch's BCC drops ask (a few pairs): both columns of the key, so the primary key index serves it.
_CONTACTS_BY_ID = select(ContactRow.location_id, ContactRow.contact_id).where(
    ContactRow.location_id.in_(bindparam("locations", expanding=True)),
    ContactRow.contact_id.in_(bindparam("values", expanding=True)),
)
_SEND_COLUMNS = (
    CrmSendRow.send_id,
    CrmSendRow.location_id,
    CrmSendRow.mailbox_id,
    CrmSendRow.message_id,
    CrmSendRow.rfc_message_id,
    CrmSendRow.final_rfc_message_id,
    CrmSendRow.gmail_message_id,
    CrmSendRow.gmail_thread_id,
    CrmSendRow.state,
    CrmSendRow.failure_reason,
    CrmSendRow.send_traceparent,
)
_SENDS_BY_ID = select(*_SEND_COLUMNS).where(_in(CrmSendRow.send_id))


def _sends_of_mailboxes() -> Any:
    return select(*_SEND_COLUMNS).where(
        CrmSendRow.mailbox_id.in_(bindparam("mailboxes", expanding=True)),
        or_(
            CrmSendRow.state == "pending",
            CrmSendRow.gmail_message_id.in_(bindparam("gmail_ids", expanding=True)),
            CrmSendRow.rfc_message_id.in_(bindparam("rfc_ids", expanding=True)),
            CrmSendRow.final_rfc_message_id.in_(bindparam("rfc_ids", expanding=True)),
        ),
    )


_SENDS_OF_MAILBOXES = _sends_of_mailboxes()
_CONVERSATIONS = select(
    ConversationRow.conversation_id, ConversationRow.location_id, ConversationRow.contact_id
).where(_in(ConversationRow.conversation_id))
_THREAD_COLUMNS = (
    ThreadRow.thread_id,
    ThreadRow.location_id,
    ThreadRow.conversation_id,
    ThreadRow.origin,
    ThreadRow.create_time,
    ConversationRow.contact_id,
)
_THREADS_BY_ID = (
    select(*_THREAD_COLUMNS)
    .join(ConversationRow, ConversationRow.conversation_id == ThreadRow.conversation_id)
    .where(_in(ThreadRow.thread_id))
)
_THREAD_KEYS = (
    select(ThreadKeyRow.location_id.label("key_location"), ThreadKeyRow.key, *_THREAD_COLUMNS)
    .select_from(ThreadKeyRow)
    .outerjoin(ThreadRow, ThreadRow.thread_id == ThreadKeyRow.thread_id)
    .outerjoin(ConversationRow, ConversationRow.conversation_id == ThreadRow.conversation_id)
    .where(_in(ThreadKeyRow.key))
)
# The thread key's own thread id, for a key whose thread row is missing.
_THREAD_KEYS = _THREAD_KEYS.add_columns(ThreadKeyRow.thread_id.label("mapped_thread_id"))
_RFC_IDS = select(
    MessageRfcIdRow.location_id, MessageRfcIdRow.rfc_message_id, MessageRfcIdRow.message_id
).where(_in(MessageRfcIdRow.rfc_message_id))
_REFERENCES = select(
    MessageReferenceRow.location_id, MessageReferenceRow.referenced_rfc_id, MessageReferenceRow.message_id
).where(_in(MessageReferenceRow.referenced_rfc_id))
_MESSAGES = select(
    MessageRow.message_id,
    MessageRow.location_id,
    MessageRow.dedup_key,
    MessageRow.conversation_id,
    MessageRow.contact_id,
    MessageRow.message_time,
    MessageRow.rfc_message_id,
    MessageRow.send_pending,
    MessageRow.send_id,
    MessageRow.superseded_by,
).where(_in(MessageRow.message_id))
_MESSAGE_THREADS = (
    select(
        ThreadMessageRow.message_id, ThreadMessageRow.thread_id.label("linked_thread_id"), *_THREAD_COLUMNS
    )
    .select_from(ThreadMessageRow)
    .outerjoin(ThreadRow, ThreadRow.thread_id == ThreadMessageRow.thread_id)
    .outerjoin(ConversationRow, ConversationRow.conversation_id == ThreadRow.conversation_id)
    .where(_in(ThreadMessageRow.message_id))
)
_COPY_COLUMNS = (
    MailboxCopyRow.message_id,
    MailboxCopyRow.mailbox_id,
    MailboxCopyRow.location_id,
    MailboxCopyRow.gmail_message_id,
    MailboxCopyRow.gmail_thread_id,
    MailboxCopyRow.labels,
    MailboxCopyRow.unread,
    MailboxCopyRow.trashed,
    MailboxCopyRow.deleted,
    MailboxCopyRow.state_history_id,
    MailboxCopyRow.update_time,
)
_COPIES_BY_GMAIL_ID = select(*_COPY_COLUMNS).where(_in(MailboxCopyRow.gmail_message_id))
_COPIES_OF_MESSAGES = select(*_COPY_COLUMNS).where(_in(MailboxCopyRow.message_id))


async def _load_seen(conn: AsyncConnection, view: StoreView, wanted: _Wanted) -> None:
    if wanted.seen_keys:
        for seen_key, mailbox_id, gmail_message_id in await _rows(conn, _SEEN_BY_KEY, wanted.seen_keys):
            view.seen_keys.add(seen_key)
            if gmail_message_id:
                view.seen_copies.add((mailbox_id, gmail_message_id))
    if wanted.gmail_copies:
        gmail_ids = {gmail_id for _, gmail_id in wanted.gmail_copies}
        for mailbox_id, gmail_message_id in await _rows(conn, _SEEN_BY_GMAIL_ID, gmail_ids):
            view.seen_copies.add((mailbox_id, gmail_message_id))
    if wanted.known_rfc_ids:
        view.known_rfc_ids.update(r for (r,) in await _rows(conn, _KNOWN_RFC_IDS, wanted.known_rfc_ids))


async def _load_contacts(conn: AsyncConnection, view: StoreView, wanted: _Wanted) -> None:
    if wanted.contact_locations and wanted.contact_emails:
        for location, email, contact_id, create_time, assigned in await _rows(
            conn, _CONTACTS_BY_EMAIL, wanted.contact_emails
        ):
            if location in wanted.contact_locations:
                view.add_contact(ContactHit(contact_id, location, create_time, assigned), email)
    if wanted.contact_ids:
        found = await conn.execute(
            _CONTACTS_BY_ID,
            {
                "locations": sorted({loc for loc, _ in wanted.contact_ids}),
                "values": sorted({c for _, c in wanted.contact_ids}),
            },
        )
        view.contact_ids.update((location, contact_id) for location, contact_id in found)


async def _load_sends(conn: AsyncConnection, view: StoreView, wanted: _Wanted) -> list[SendState]:
    rows = []
    if wanted.send_ids:
        rows += await _rows(conn, _SENDS_BY_ID, wanted.send_ids)
    if wanted.send_mailboxes:
        rows += list(
            (
                await conn.execute(
                    _SENDS_OF_MAILBOXES,
                    {
                        "mailboxes": sorted(wanted.send_mailboxes),
                        "gmail_ids": sorted(wanted.send_gmail_ids),
                        "rfc_ids": sorted(wanted.send_rfc_ids),
                    },
                )
            ).all()
        )
    for row in rows:
        if row.send_id not in view.sends:
            view.add_send(
                SendState(
                    row.send_id,
                    row.location_id,
                    row.mailbox_id,
                    row.message_id,
                    row.rfc_message_id,
                    row.final_rfc_message_id,
                    row.gmail_message_id,
                    row.gmail_thread_id,
                    row.state,
                    row.failure_reason,
                    row.send_traceparent,
                )
            )
    return list(view.sends.values())


async def _load_conversations(conn: AsyncConnection, view: StoreView, ids: set[str]) -> None:
    if ids:
        for conversation_id, location, contact_id in await _rows(conn, _CONVERSATIONS, ids):
            view.conversations[conversation_id] = (location, contact_id)


def _thread_state(row: Any) -> ThreadState | None:
    if row.thread_id is None or row.contact_id is None:
        return None
    return ThreadState(
        row.thread_id, row.location_id, row.conversation_id, row.contact_id, row.origin, row.create_time
    )


async def _load_threads_by_id(conn: AsyncConnection, view: StoreView, ids: set[str]) -> None:
    if ids:
        for row in await _rows(conn, _THREADS_BY_ID, ids):
            thread = _thread_state(row)
            if thread is not None:
                view.add_thread(thread)


async def _load_thread_keys(conn: AsyncConnection, view: StoreView, pairs: set[tuple[str, str]]) -> None:
    if not pairs:
        return
    for row in await _rows(conn, _THREAD_KEYS, {key for _, key in pairs}):
        if (row.key_location, row.key) not in pairs:
            continue
        view.thread_keys[(row.key_location, row.key)] = row.mapped_thread_id
        thread = _thread_state(row)
        if thread is not None:
            view.add_thread(thread)


async def _load_rfc_ids(conn: AsyncConnection, view: StoreView, pairs: set[tuple[str, str]]) -> set[str]:
    found: set[str] = set()
    if pairs:
        for location, rfc, message_id in await _rows(conn, _RFC_IDS, {rfc for _, rfc in pairs}):
            # Any row makes the Message-ID known to the service (the wait on a parent, R4).
            view.known_rfc_ids.add(rfc)
            if (location, rfc) in pairs:
                view.rfc_ids[(location, rfc)] = message_id
                found.add(message_id)
    return found


async def _load_references(conn: AsyncConnection, view: StoreView, pairs: set[tuple[str, str]]) -> set[str]:
    found: set[str] = set()
    if pairs:
        for location, rfc, message_id in await _rows(conn, _REFERENCES, {rfc for _, rfc in pairs}):
            if (location, rfc) in pairs:
                view.add_reference(location, rfc, message_id)
                found.add(message_id)
    return found


async def _load_messages(conn: AsyncConnection, view: StoreView, ids: set[str]) -> None:
    if ids:
        for row in await _rows(conn, _MESSAGES, ids):
            view.add_message(
                MessageState(
                    row.message_id,
                    row.location_id,
                    row.dedup_key,
                    row.conversation_id,
                    row.contact_id,
                    row.message_time,
                    row.rfc_message_id,
                    row.send_pending,
                    row.send_id,
                    row.superseded_by,
                )
            )


async def _load_message_threads(conn: AsyncConnection, view: StoreView, ids: set[str]) -> None:
    if ids:
        for row in await _rows(conn, _MESSAGE_THREADS, ids):
            view.link(row.linked_thread_id, row.message_id)
            thread = _thread_state(row)
            if thread is not None:
                view.add_thread(thread)


def _copy_state(row: Any) -> CopyState:
    return CopyState(
        row.message_id,
        row.mailbox_id,
        row.location_id,
        row.gmail_message_id,
        row.gmail_thread_id,
        list(row.labels or []),
        row.unread,
        row.trashed,
        row.deleted,
        row.state_history_id,
        row.update_time,
    )


async def _load_copies_by_gmail_id(
    conn: AsyncConnection, view: StoreView, pairs: set[tuple[str, str]]
) -> set[str]:
    """The copies with these Gmail ids; returns the messages they belong to."""
    found: set[str] = set()
    if pairs:
        for row in await _rows(conn, _COPIES_BY_GMAIL_ID, {gmail_id for _, gmail_id in pairs}):
            if (row.mailbox_id, row.gmail_message_id) in pairs:
                view.add_copy(_copy_state(row))
                found.add(row.message_id)
    return found


async def _load_copies_of_messages(conn: AsyncConnection, view: StoreView, ids: set[str]) -> None:
    if ids:
        for row in await _rows(conn, _COPIES_OF_MESSAGES, ids):
            view.add_copy(_copy_state(row))
