"""Values the threading store takes in and hands out: a message's stored content, a CRM send as outbound
announced it, what a decision changed (for the events), and the keys that identify a copy and a CRM send."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.threading.domain.addresses import normalize_message_id
from services.threading.domain.model import Direction, IncomingMessage, Participant, Source


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
    # A change to a message announced before (Gmail's Message-ID, a merge), and the record merged into it.
    revised: bool = False
    supersedes_message_id: str = ""


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
class SentCopy:
    """A Gmail copy recognised as a CRM send's (R6): which send, and the trace of that send to link to."""

    mailbox_id: str
    gmail_message_id: str
    send_id: str
    send_traceparent: str


@dataclass(frozen=True)
class Applied:
    """What a transaction changed, for the events the consumer stages in the same transaction."""

    synced: tuple[SyncedMessage, ...] = ()
    created_contacts: tuple[CreatedContact, ...] = ()
    # Whether a placed message has attachments whose content is still to be fetched.
    attachments_to_fetch: bool = False
    sent_copies: tuple[SentCopy, ...] = ()

    @property
    def placed_locations(self) -> frozenset[str]:
        return frozenset(s.location_id for s in self.synced)


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

    def as_message(self) -> IncomingMessage:
        """The send as the rules and the store see any message (source CRM_SEND, no Gmail ids yet)."""
        return IncomingMessage(
            mailbox_id=self.mailbox_id,
            gmail_message_id="",
            gmail_thread_id=self.gmail_thread_id,
            rfc_message_id=self.rfc_message_id,
            direction=Direction.OUTBOUND,
            source=Source.CRM_SEND,
            internal_time=self.create_time,
            participants=self.participants,
            in_reply_to=self.in_reply_to,
            references=self.references,
        )


def seen_key_of(message: IncomingMessage) -> str:
    """The key of one copy handed to the rules: a mailbox's Gmail message, or one BCC drop."""
    if message.source is Source.BCC_DROP and message.bcc_drop is not None:
        return f"drop:{message.bcc_drop.drop_id}"
    return f"gmail:{message.mailbox_id}:{message.gmail_message_id}"


def send_seen_key(send_id: str) -> str:
    return f"send:{send_id}"


def considered_locations(message: IncomingMessage) -> list[str]:
    """The locations a message may reach: its connections' (sorted), or a drop's own location."""
    if message.source is Source.BCC_DROP:
        return [message.bcc_drop.location_id] if message.bcc_drop else []
    return sorted({c.location_id for c in message.connections})


def crm_message_key(send: CrmSendInput) -> str:
    """R15's key of a CRM send's message: its Message-ID, else the send id."""
    rfc = normalize_message_id(send.rfc_message_id)
    return f"mid:{rfc}" if rfc else f"send:{send.send_id}"
