"""Which way an email goes out (R13), whether it counts against the Gmail quota (R14), and whether the user's
connection may send through Gmail (R10, R11, R12)."""

from __future__ import annotations

import hashlib
from enum import Enum

from services.runtime.errors import FailedPrecondition


class SendKind(Enum):
    INDIVIDUAL = "INDIVIDUAL"
    BULK = "BULK"
    WORKFLOW = "WORKFLOW"


class Channel(Enum):
    USER_GMAIL = "USER_GMAIL"
    LOCATION_SMTP = "LOCATION_SMTP"


class ConnectionNotActive(FailedPrecondition):
    """The user's connection cannot send through Gmail in its present state; `state` and `reason` say why."""

    reason = "CONNECTION_NOT_ACTIVE"

    def __init__(self, *, connection_id: str, state: str, explanation: str, mailbox_email: str = "") -> None:
        whose = f"the connection of {mailbox_email}" if mailbox_email else f"connection {connection_id}"
        super().__init__(
            f"{whose} is {state}: {explanation}",
            connection_id=connection_id,
            state=state,
            mailbox_email=mailbox_email,
        )
        self.connection_id = connection_id
        self.state = state
        self.explanation = explanation


_WHY_NOT_ACTIVE = {
    "REAUTH_REQUIRED": "Google refused the connection's grant; the user must reconnect the mailbox (R12)",
    "REPLACED": "the location's mailbox was changed with Update Email; sends go through the new mailbox (R10)",
    "DISCONNECTED": "the mailbox was disconnected from the location (R11)",
}


def channel_for(kind: SendKind) -> Channel:
    """Only an individual email goes through the user's own Gmail; bulk and workflow use the location's SMTP."""
    return Channel.USER_GMAIL if kind is SendKind.INDIVIDUAL else Channel.LOCATION_SMTP


def counts_against_gmail_quota(kind: SendKind) -> bool:
    return channel_for(kind) is Channel.USER_GMAIL


def require_connection_can_send(*, connection_id: str, state: str, mailbox_email: str = "") -> None:
    """Raises ConnectionNotActive unless the connection (state by name, e.g. "CONNECTED") may send."""
    if state == "CONNECTED":
        return
    explanation = _WHY_NOT_ACTIVE.get(state, "the connection is in an unknown state")
    raise ConnectionNotActive(
        connection_id=connection_id, state=state, explanation=explanation, mailbox_email=mailbox_email
    )


def ledger_key(location_id: str, request_id: str) -> str:
    """The send ledger's idempotency key: a CRM request id is unique within its location only.

    Hashed so any id lengths fit the column, length-prefixed so no two (location, request) pairs collide.
    """
    material = f"{len(location_id)}:{location_id}{request_id}".encode()
    return hashlib.sha256(material).hexdigest()
