"""What ingest needs from the auth service, as ports: the mailbox with its connections, and access tokens.

The sync worker depends on these two protocols only; `services.ingest.auth_client` implements them over gRPC
(GetMailbox, GetAccessToken), and tests may stand in for them. Values here are plain dataclasses (no protos).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CONNECTED = "CONNECTED"
REAUTH_REQUIRED = "REAUTH_REQUIRED"
REPLACED = "REPLACED"
DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True)
class ConnectionInfo:
    """One (user, location) -> mailbox connection with its start point (R1) and state."""

    connection_id: str
    user_id: str
    location_id: str
    state: str
    start_history_id: int
    start_time: dt.datetime
    state_change_time: dt.datetime | None = None


@dataclass(frozen=True)
class MailboxInfo:
    mailbox_id: str
    email: str
    connections: tuple[ConnectionInfo, ...]
    # auth's AccountType (mailsync.v1.AccountType; 0 when unknown), carried on each message for the decision metric.
    account_type: int = 0

    @property
    def connected(self) -> tuple[ConnectionInfo, ...]:
        return tuple(c for c in self.connections if c.state == CONNECTED)

    @property
    def awaiting_reauth(self) -> bool:
        return any(c.state == REAUTH_REQUIRED for c in self.connections)

    def connected_in(self, location_id: str) -> bool:
        """True when the mailbox has a live (or paused for reauth) connection in the location."""
        return any(
            c.location_id == location_id and c.state in (CONNECTED, REAUTH_REQUIRED) for c in self.connections
        )


class MailboxDirectory(Protocol):
    async def get_mailbox(
        self, *, mailbox_id: str = "", email: str = "", fresh: bool = False
    ) -> MailboxInfo | None:
        """The mailbox by id or Gmail address with all its connections; None when auth does not know it.
        `fresh`: auth's answer now, never a kept one (a sync pass confirms a stop with it)."""
        ...


class AccessTokens(Protocol):
    async def access_token(self, mailbox_id: str) -> str:
        """A valid access token; raises PermanentAuthFailure when the user must reconnect (R12)."""
        ...

    def forget_token(self, mailbox_id: str, rejected: str = "") -> None:
        """Gmail refused `rejected` (else the token held): the next call asks auth again and names it."""
        ...

    def drop_token(self, mailbox_id: str) -> None:
        """The mailbox's connection changed: the next call asks auth again (the token was not refused)."""
        ...


def sync_scope(connections: Sequence[ConnectionInfo]) -> tuple[int, dt.datetime] | None:
    """The earliest start point among CONNECTED connections (R1: nothing before it is ever imported)."""
    live = [c for c in connections if c.state == CONNECTED]
    if not live:
        return None
    return min(c.start_history_id for c in live), min(c.start_time for c in live)
