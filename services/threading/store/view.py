"""The in-memory view of the store that a batch is decided on: the rows the batch's operations can reach (loaded
by `snapshot.load_view`), updated as each operation is applied, so a later message of the batch sees what an
earlier one placed exactly as it would after a commit. `knowledge_for` answers what `load_knowledge` used to ask
the database, message by message.

The view only holds rows whose keys the loader derived from the batch's operations; every lookup here uses one of
those keys (see `snapshot.py`), so "not in the view" means "not in the store".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.threading.domain.addresses import normalize_email
from services.threading.domain.model import (
    Contact,
    CrmSend,
    Direction,
    IncomingMessage,
    Knowledge,
    Source,
    ThreadHome,
    gmail_thread_key,
)
from services.threading.store.values import considered_locations


@dataclass
class ThreadState:
    thread_id: str
    location_id: str
    conversation_id: str
    # The contact of the thread's conversation.
    contact_id: str
    # "gmail", "crm" or "chain" (the prefix of the key that created it).
    origin: str
    create_time: dt.datetime | None


@dataclass
class MessageState:
    message_id: str
    location_id: str
    dedup_key: str
    conversation_id: str
    contact_id: str
    message_time: dt.datetime
    rfc_message_id: str
    send_pending: bool
    send_id: str = ""
    # The message this record was merged into (R6); empty for a message readers see.
    superseded_by: str = ""
    # The row to insert when this batch creates the message (later changes in the batch go into it).
    new_row: dict[str, Any] | None = None


@dataclass
class SendState:
    """A CRM send (R6) as recorded."""

    send_id: str
    location_id: str
    mailbox_id: str
    message_id: str
    rfc_message_id: str
    final_rfc_message_id: str
    gmail_message_id: str
    gmail_thread_id: str
    # "pending", "sent" or "failed".
    state: str
    failure_reason: str = ""
    # The send's W3C traceparent ("" when untraced or recorded before it was kept).
    traceparent: str = ""
    new_row: dict[str, Any] | None = None


@dataclass
class CopyState:
    """A message as seen in one mailbox, with its Gmail state (R17)."""

    message_id: str
    mailbox_id: str
    location_id: str
    gmail_message_id: str
    gmail_thread_id: str
    labels: list[str]
    unread: bool
    trashed: bool
    deleted: bool
    state_history_id: int
    update_time: dt.datetime
    new_row: dict[str, Any] | None = None


@dataclass(frozen=True)
class ContactHit:
    """A live contact found under one of its addresses."""

    contact_id: str
    location_id: str
    create_time: dt.datetime
    assigned_user_id: str


@dataclass
class StoreView:
    """The store as far as one batch can see it (loaded rows plus the batch's own changes)."""

    # Copies already handed to the rules (seen_messages.seen_key), and by (mailbox, Gmail id).
    seen_keys: set[str] = field(default_factory=set)
    seen_copies: set[tuple[str, str]] = field(default_factory=set)
    # Message-IDs the service has seen at all: of a seen copy, or stored as a message's id or alias.
    known_rfc_ids: set[str] = field(default_factory=set)
    # Every contact row (live or tombstoned) by (location, contact id); live ones by (location, address).
    contact_ids: set[tuple[str, str]] = field(default_factory=set)
    contacts_by_email: dict[tuple[str, str], dict[str, ContactHit]] = field(default_factory=dict)
    thread_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    threads: dict[str, ThreadState] = field(default_factory=dict)
    # conversation id -> (location, contact).
    conversations: dict[str, tuple[str, str]] = field(default_factory=dict)
    messages: dict[str, MessageState] = field(default_factory=dict)
    message_by_key: dict[tuple[str, str], str] = field(default_factory=dict)
    rfc_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    references: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    message_threads: dict[str, set[str]] = field(default_factory=dict)
    sends: dict[str, SendState] = field(default_factory=dict)
    copies: dict[tuple[str, str], CopyState] = field(default_factory=dict)
    copies_by_gmail: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    # Grows whenever an operation changes the view (a waiting message is worth deciding again only then).
    version: int = 0
    # The rules' Contact values already built, by (location, contact, addresses it was found under).
    _contact_values: dict[tuple[str, str, frozenset[str]], Contact] = field(default_factory=dict)

    # Filling (the loader and the engine).

    def add_contact(self, hit: ContactHit, normalized_email: str) -> None:
        self.contact_ids.add((hit.location_id, hit.contact_id))
        self.contacts_by_email.setdefault((hit.location_id, normalized_email), {})[hit.contact_id] = hit

    def add_thread(self, thread: ThreadState) -> None:
        self.threads[thread.thread_id] = thread
        self.conversations.setdefault(thread.conversation_id, (thread.location_id, thread.contact_id))

    def add_message(self, message: MessageState) -> None:
        self.messages[message.message_id] = message
        self.message_by_key.setdefault((message.location_id, message.dedup_key), message.message_id)

    def link(self, thread_id: str, message_id: str) -> None:
        self.message_threads.setdefault(message_id, set()).add(thread_id)

    def add_rfc_id(self, location_id: str, rfc_message_id: str, message_id: str) -> bool:
        """Maps a Message-ID to a message unless the location already maps it; True if this call did."""
        if (location_id, rfc_message_id) in self.rfc_ids:
            return False
        self.rfc_ids[(location_id, rfc_message_id)] = message_id
        self.known_rfc_ids.add(rfc_message_id)
        return True

    def add_reference(self, location_id: str, referenced_rfc_id: str, message_id: str) -> None:
        self.references.setdefault((location_id, referenced_rfc_id), set()).add(message_id)

    def add_send(self, send: SendState) -> None:
        self.sends[send.send_id] = send

    def add_copy(self, copy: CopyState) -> bool:
        """Adds a mailbox copy unless the message already has one in that mailbox; True if this call did."""
        key = (copy.message_id, copy.mailbox_id)
        if key in self.copies:
            return False
        self.copies[key] = copy
        self.copies_by_gmail.setdefault((copy.mailbox_id, copy.gmail_message_id), []).append(key)
        return True

    def move_copy(self, copy: CopyState, message_id: str) -> None:
        """The mailbox copy now belongs to another message (a record merged into a CRM send's message, R6)."""
        old = (copy.message_id, copy.mailbox_id)
        del self.copies[old]
        listed = self.copies_by_gmail.get((copy.mailbox_id, copy.gmail_message_id), [])
        if old in listed:
            listed.remove(old)
        copy.message_id = message_id
        self.add_copy(copy)

    def copies_of_message(self, message_id: str) -> list[CopyState]:
        return [copy for (owner, _), copy in sorted(self.copies.items()) if owner == message_id]

    def add_seen(self, seen_key: str, mailbox_id: str, gmail_message_id: str, rfc_message_id: str) -> None:
        self.seen_keys.add(seen_key)
        if gmail_message_id:
            self.seen_copies.add((mailbox_id, gmail_message_id))
        if rfc_message_id:
            self.known_rfc_ids.add(rfc_message_id)

    # Questions.

    def copies_of(self, mailbox_id: str, gmail_message_id: str) -> list[CopyState]:
        return [self.copies[key] for key in self.copies_by_gmail.get((mailbox_id, gmail_message_id), ())]

    def thread_of(self, message_id: str) -> str | None:
        """One thread of a stored message (the first by id, so the choice is stable)."""
        threads = self.message_threads.get(message_id)
        return min(threads) if threads else None

    def contacts_matching(self, location_ids: Iterable[str], emails: Iterable[str]) -> tuple[Contact, ...]:
        """The live contacts of these locations with any of these addresses, as the rules see them (a contact
        carries the addresses it was found under: the rules only ask whether an address is one of them)."""
        wanted = sorted({normalize_email(e) for e in emails if e})
        found: dict[tuple[str, str], tuple[ContactHit, set[str]]] = {}
        for location in sorted(set(location_ids)):
            for email in wanted:
                for hit in self.contacts_by_email.get((location, email), {}).values():
                    found.setdefault((location, hit.contact_id), (hit, set()))[1].add(email)
        return tuple(
            self._contact_value(hit, frozenset(addresses)) for _, (hit, addresses) in sorted(found.items())
        )

    def _contact_value(self, hit: ContactHit, addresses: frozenset[str]) -> Contact:
        key = (hit.location_id, hit.contact_id, addresses)
        value = self._contact_values.get(key)
        if value is None:
            value = Contact(hit.contact_id, hit.location_id, addresses, hit.create_time, hit.assigned_user_id)
            self._contact_values[key] = value
        return value

    def knowledge_for(self, message: IncomingMessage, key: str) -> Knowledge:
        """Everything the rules need about this message, limited to the locations it may reach."""
        locations = considered_locations(message)
        homes: list[ThreadHome] = []
        if locations and message.source is Source.GMAIL_SYNC and message.gmail_thread_id:
            gmail_key = gmail_thread_key(message.mailbox_id, message.gmail_thread_id)
            homes += self._homes(
                (self.thread_keys.get((loc, gmail_key)) for loc in locations), "gmail_thread"
            )
        if locations and message.referenced_ids:
            parents = (self.rfc_ids.get((loc, rfc)) for loc in locations for rfc in message.referenced_ids)
            homes += self._homes(self._threads_of(parents), "message_id")
        if locations and message.message_id:
            children = (m for loc in locations for m in self.references.get((loc, message.message_id), ()))
            homes += self._homes(self._threads_of(children), "message_id")
        if locations:
            same = [self.message_by_key.get((loc, key)) for loc in locations]
            if message.message_id:
                # Also the email stored under another of its ids (a CRM send whose Message-ID Gmail replaced).
                same += [self.rfc_ids.get((loc, message.message_id)) for loc in locations]
            homes += self._homes(self._threads_of(same), "same_message")
        return Knowledge(
            contacts=self.contacts_matching(locations, [p.email for p in message.participants]),
            homes=tuple(homes),
            crm_sends=self._crm_sends(message),
            seen_message_ids=frozenset(p for p in message.parent_ids if p in self.known_rfc_ids),
        )

    def _threads_of(self, message_ids: Iterable[str | None]) -> set[str]:
        return {t for m in message_ids if m for t in self.message_threads.get(m, ())}

    def _homes(self, thread_ids: Iterable[str | None], found_by: str) -> list[ThreadHome]:
        homes = []
        for thread_id in sorted({t for t in thread_ids if t}):
            thread = self.threads.get(thread_id)
            if thread is None:
                continue
            homes.append(
                ThreadHome(
                    thread.location_id,
                    thread.conversation_id,
                    thread.contact_id,
                    thread.thread_id,
                    found_by,
                    crm_started=thread.origin == "crm",
                    create_time=thread.create_time,
                )
            )
        return homes

    def _crm_sends(self, message: IncomingMessage) -> tuple[CrmSend, ...]:
        """The mailbox's CRM sends that are unresolved or carry this copy's ids (failed ones hold nothing)."""
        if message.source is not Source.GMAIL_SYNC or message.direction is not Direction.OUTBOUND:
            return ()
        found = []
        for send in sorted(self.sends.values(), key=lambda s: s.send_id):
            if send.mailbox_id != message.mailbox_id or send.state == "failed":
                continue
            matches = send.state == "pending" or send.gmail_message_id == message.gmail_message_id
            if message.message_id:
                matches = matches or message.message_id in (send.rfc_message_id, send.final_rfc_message_id)
            if matches:
                found.append(
                    CrmSend(
                        send.send_id,
                        send.location_id,
                        send.mailbox_id,
                        send.message_id,
                        send.rfc_message_id,
                        send.final_rfc_message_id,
                        send.gmail_message_id,
                        unresolved=send.state == "pending",
                    )
                )
        return tuple(found)
