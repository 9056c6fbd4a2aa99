"""Value types of the sync rules: what a message, a connection, a contact and a known thread look like to the rules,
and what the rules decide (placements and one explained decision per location considered)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from functools import cached_property

from services.threading.domain.addresses import normalize_email, normalize_message_id


class Direction(enum.Enum):
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"


class Source(enum.Enum):
    GMAIL_SYNC = "GMAIL_SYNC"
    BCC_DROP = "BCC_DROP"
    CRM_SEND = "CRM_SEND"


class Role(enum.Enum):
    FROM = "FROM"
    TO = "TO"
    CC = "CC"
    BCC = "BCC"
    DELIVERED_TO = "DELIVERED_TO"
    REPLY_TO = "REPLY_TO"
    SENDER = "SENDER"


class ConnectionState(enum.Enum):
    CONNECTED = "CONNECTED"
    REAUTH_REQUIRED = "REAUTH_REQUIRED"
    REPLACED = "REPLACED"
    DISCONNECTED = "DISCONNECTED"


# Labels whose messages never sync (R1).
EXCLUDED_LABELS = ("SPAM", "TRASH", "DRAFT", "CHAT")


@dataclass(frozen=True)
class Participant:
    email: str
    role: Role
    position: int = 0
    display_name: str = ""

    @property
    def normalized_email(self) -> str:
        return normalize_email(self.email)


@dataclass(frozen=True)
class ConnectionSnapshot:
    """One connection of the mailbox as ingest saw it when it observed the message."""

    connection_id: str
    user_id: str
    location_id: str
    state: ConnectionState
    start_time: dt.datetime | None = None
    start_history_id: int = 0
    state_change_time: dt.datetime | None = None


@dataclass(frozen=True)
class BccDrop:
    """Set on a message that came through a location's BCC address (R9)."""

    drop_id: str
    location_id: str
    sender_user_id: str
    content_digest: str = ""
    # Set when the drop failed R9's sender or authentication checks.
    rejection_reason: str = ""


@dataclass(frozen=True)
class IncomingMessage:
    """One email as seen in one mailbox or one BCC drop (the rules' view of a NormalizedMessage)."""

    mailbox_id: str
    gmail_message_id: str
    gmail_thread_id: str
    rfc_message_id: str
    direction: Direction
    source: Source
    internal_time: dt.datetime
    participants: tuple[Participant, ...] = ()
    labels: frozenset[str] = frozenset()
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    history_id: int = 0
    connections: tuple[ConnectionSnapshot, ...] = ()
    bcc_drop: BccDrop | None = None
    mailbox_email: str = ""

    # Derived once per message (the rules and the store ask for them many times).
    @cached_property
    def message_id(self) -> str:
        return normalize_message_id(self.rfc_message_id)

    @cached_property
    def referenced_ids(self) -> tuple[str, ...]:
        """In-Reply-To then References, normalized, without repeats or the message's own id."""
        seen: list[str] = []
        for raw in (*self.in_reply_to, *self.references):
            value = normalize_message_id(raw)
            if value and value not in seen and value != self.message_id:
                seen.append(value)
        return tuple(seen)

    @cached_property
    def parent_ids(self) -> tuple[str, ...]:
        return tuple(
            v for v in (normalize_message_id(r) for r in self.in_reply_to) if v and v != self.message_id
        )

    def with_role(self, role: Role) -> tuple[Participant, ...]:
        return tuple(sorted((p for p in self.participants if p.role is role), key=lambda p: p.position))

    @property
    def sender(self) -> Participant | None:
        senders = self.with_role(Role.FROM)
        return senders[0] if senders else None

    @property
    def recipients_in_header_order(self) -> tuple[Participant, ...]:
        """To, then Cc, then Bcc, each by position (R5's order)."""
        return self.with_role(Role.TO) + self.with_role(Role.CC) + self.with_role(Role.BCC)


def message_key(message: IncomingMessage) -> str:
    """R15: the Message-ID, else the mailbox and Gmail id, else (a drop) the content digest."""
    if message.message_id:
        return f"mid:{message.message_id}"
    if message.source is Source.BCC_DROP and message.bcc_drop is not None:
        return f"drop:{message.bcc_drop.content_digest or message.bcc_drop.drop_id}"
    return f"gmail:{message.mailbox_id}:{message.gmail_message_id}"


@dataclass(frozen=True)
class Contact:
    """The replica of a CRM contact, as far as the rules need it."""

    contact_id: str
    location_id: str
    emails: frozenset[str]
    create_time: dt.datetime
    assigned_user_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "emails", frozenset(normalize_email(e) for e in self.emails))


@dataclass(frozen=True)
class ThreadHome:
    """Where a thread the message belongs to already lives (R4)."""

    location_id: str
    conversation_id: str
    contact_id: str
    thread_id: str
    # How the home was found: "gmail_thread" (same mailbox and Gmail thread), "message_id" (a Message-ID chain:
    # a stored message it replies to, or a stored reply to it) or "same_message" (this very email, R15, is already
    # stored there through another mailbox or a drop; not a thread home, only a copy to link).
    found_by: str
    # True for a thread started from the CRM (R6): it belongs to its location alone (R3).
    crm_started: bool = False
    create_time: dt.datetime | None = None


@dataclass(frozen=True)
class CrmSend:
    """A CRM send of the mailbox that threading recorded (R6)."""

    send_id: str
    location_id: str
    mailbox_id: str
    message_id: str
    rfc_message_id: str = ""
    final_rfc_message_id: str = ""
    gmail_message_id: str = ""
    # True until `sent` or `failed` resolves it.
    unresolved: bool = True


@dataclass(frozen=True)
class Knowledge:
    """What the store knows that the rules need for one message."""

    contacts: tuple[Contact, ...] = ()
    homes: tuple[ThreadHome, ...] = ()
    crm_sends: tuple[CrmSend, ...] = ()
    # Referenced Message-IDs that the service has seen at all (placed or not), for the wait on a parent.
    seen_message_ids: frozenset[str] = frozenset()


class Outcome(enum.Enum):
    """What the consumer does with the message."""

    DECIDED = "DECIDED"
    # The mailbox has an unresolved CRM send and this SENT copy is not recognised yet: redeliver later (R6).
    WAIT_FOR_SEND = "WAIT_FOR_SEND"
    # The message replies to a Message-ID never seen yet: redeliver later so the parent decides first (R4).
    WAIT_FOR_PARENT = "WAIT_FOR_PARENT"


@dataclass(frozen=True)
class NewContact:
    """A contact the sync creates (only from a BCC drop's first To recipient, R9)."""

    location_id: str
    email: str
    display_name: str
    assigned_user_id: str


@dataclass(frozen=True)
class ThreadTarget:
    """The thread a placement goes to: an existing one, or a new one identified by a stable key."""

    existing_thread_id: str = ""
    # For a new thread: "gmail:<mailbox>:<gmail thread>" or "chain:<root Message-ID or R15 key>".
    new_key: str = ""
    # Extra keys to attach to the thread (the message's Gmail thread in its mailbox), so later replies find it.
    alias_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    location_id: str
    contact_id: str
    thread: ThreadTarget
    direction: Direction
    rule_id: str
    # Set when the conversation already exists (R4); else the conversation is the contact's in the location.
    conversation_id: str = ""
    new_contact: NewContact | None = None


@dataclass(frozen=True)
class EchoLink:
    """The copy from Gmail's history of a CRM send: link it to the stored message, place nothing new (R6)."""

    send_id: str
    location_id: str
    message_id: str


@dataclass(frozen=True)
class LocationDecision:
    location_id: str
    synced: bool
    rule_id: str
    reason: str
    contact_id: str = ""
    placement: Placement | None = None


@dataclass(frozen=True)
class Decision:
    """The result of the rules for one message."""

    outcome: Outcome
    message_key: str
    decisions: tuple[LocationDecision, ...] = ()
    echo: EchoLink | None = None
    wait_reason: str = ""
    placements: tuple[Placement, ...] = field(default=())

    @property
    def synced_anywhere(self) -> bool:
        return bool(self.placements) or self.echo is not None


def gmail_thread_key(mailbox_id: str, gmail_thread_id: str) -> str:
    return f"gmail:{mailbox_id}:{gmail_thread_id}"
