"""The normalized form of one email as ingest publishes it, free of MIME, protos and I/O."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageSource(enum.Enum):
    GMAIL_SYNC = "gmail_sync"
    BCC_DROP = "bcc_drop"
    CRM_SEND = "crm_send"


class ParticipantRole(enum.Enum):
    """The header a participant was named in, listed in the order participants are reported."""

    FROM = "from"
    SENDER = "sender"
    REPLY_TO = "reply_to"
    TO = "to"
    CC = "cc"
    BCC = "bcc"
    DELIVERED_TO = "delivered_to"


@dataclass(frozen=True)
class Participant:
    email: str
    display_name: str
    role: ParticipantRole
    # Zero-based position within its role, in header order (R5: "first To recipient").
    position: int


@dataclass(frozen=True)
class Attachment:
    """An attachment described, not carried: its bytes are fetched later by `part_path`."""

    part_path: str
    filename: str
    content_type: str
    size_bytes: int
    content_id: str
    inline: bool
    sha256: str


@dataclass(frozen=True)
class MailboxCopy:
    """What Gmail says about the copy of the message in one mailbox (all empty for a BCC drop)."""

    mailbox_id: str = ""
    mailbox_email: str = ""
    gmail_message_id: str = ""
    gmail_thread_id: str = ""
    history_id: int = 0
    label_ids: tuple[str, ...] = ()
    internal_time: dt.datetime | None = None


@dataclass(frozen=True)
class NormalizedMail:
    """Everything the rest of the system needs from one raw message; `defects` says what could not be read."""

    copy: MailboxCopy
    source: MessageSource
    direction: Direction
    rfc_message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    participants: tuple[Participant, ...]
    text_body: str
    html_body: str
    body_truncated: bool
    attachments: tuple[Attachment, ...]
    header_date: dt.datetime | None
    auto_submitted: bool
    list_mail: bool
    forwarded: bool
    size_bytes: int
    snippet: str
    defects: tuple[str, ...] = field(default=())

    def participants_in(self, role: ParticipantRole) -> tuple[Participant, ...]:
        return tuple(p for p in self.participants if p.role is role)
