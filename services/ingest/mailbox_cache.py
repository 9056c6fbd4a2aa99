"""Ingest's copy of what auth says about mailboxes: each mailbox's connection snapshot (and access token) is asked
for once and kept, so a sync pass or a push costs no call to auth, until a connection event of that mailbox says it
changed.

Every ingest process listens to the connection events on a plain (non-durable) NATS subscription of its own: the
durable consumer that acts on them delivers each event to one replica only, and every replica's copy must go. A
snapshot is also dropped after `ttl`, which bounds the staleness should an event be missed while the process was
disconnected from NATS. An answer that was in flight when an event arrived is not kept (a generation counter per
mailbox), so an old snapshot can never outlive the event that replaced it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mailsync.v1 import events_pb2
from services.ingest.mailboxes import AccessTokens, MailboxDirectory, MailboxInfo
from services.runtime import subjects
from services.runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    mailbox: MailboxInfo
    fetched_at: dt.datetime


class CachedMailboxes:
    """A MailboxDirectory and AccessTokens in front of auth's; `listen` subscribes to the connection events."""

    def __init__(
        self,
        directory: MailboxDirectory,
        tokens: AccessTokens,
        *,
        ttl: dt.timedelta,
        clock: Clock | None = None,
    ) -> None:
        self._directory = directory
        self._tokens = tokens
        self._ttl = ttl
        self._clock = clock or SystemClock()
        self._by_id: dict[str, _Snapshot] = {}
        self._id_by_email: dict[str, str] = {}
        # Bumped by every event of the mailbox (by id) and by any event at all (for lookups by address).
        self._generation: dict[str, int] = {}
        self._events_seen = 0
        self._subscription: Subscription | None = None

    async def get_mailbox(
        self, *, mailbox_id: str = "", email: str = "", fresh: bool = False
    ) -> MailboxInfo | None:
        known_id = mailbox_id or self._id_by_email.get(email.lower(), "")
        cached = self._by_id.get(known_id)
        # The durable consumer that resumes a mailbox on a connection event and this cache's own subscription see
        # the event independently: a pass may run before the cached snapshot is dropped, so a stop is confirmed
        # with `fresh`.
        if not fresh and cached is not None and self._clock.now() - cached.fetched_at < self._ttl:
            if not email or cached.mailbox.email == email.lower():
                return cached.mailbox
        generation, events_seen = self._generation.get(known_id, 0), self._events_seen
        mailbox = await self._directory.get_mailbox(mailbox_id=mailbox_id, email=email)
        if mailbox is None:
            return None
        stale = (
            self._generation.get(known_id, 0) != generation if known_id else self._events_seen != events_seen
        )
        if stale:
            # An event arrived while auth was answering: this answer may predate it, so it is not kept.
            return mailbox
        self._by_id[mailbox.mailbox_id] = _Snapshot(mailbox, self._clock.now())
        self._id_by_email[mailbox.email.lower()] = mailbox.mailbox_id
        return mailbox

    async def access_token(self, mailbox_id: str) -> str:
        return await self._tokens.access_token(mailbox_id)

    def forget_token(self, mailbox_id: str, rejected: str = "") -> None:
        """Drops a token Gmail refused, so the next call asks auth again and names the refused one."""
        self._tokens.forget_token(mailbox_id, rejected)

    def drop_token(self, mailbox_id: str) -> None:
        self._tokens.drop_token(mailbox_id)

    def forget(self, mailbox_id: str) -> None:
        """Drops everything known about the mailbox: its next lookup asks auth."""
        self._generation[mailbox_id] = self._generation.get(mailbox_id, 0) + 1
        self._events_seen += 1
        snapshot = self._by_id.pop(mailbox_id, None)
        if snapshot is not None:
            self._id_by_email.pop(snapshot.mailbox.email.lower(), None)
        self._tokens.drop_token(mailbox_id)

    async def listen(self, client: Client) -> None:
        """Subscribes this process to every connection event (idempotent)."""
        if self._subscription is None:
            self._subscription = await client.subscribe(subjects.CONNECTION_ALL, cb=self._on_event)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()

    async def _on_event(self, message: Msg) -> None:
        event = events_pb2.ConnectionEvent()
        try:
            event.ParseFromString(message.data)
        except Exception:
            log.warning("unreadable connection event on %s", message.subject)
            # Whose it was is unknown: nothing cached can be trusted.
            for mailbox_id in list(self._by_id):
                self.forget(mailbox_id)
            return
        self.forget(event.mailbox_id)
