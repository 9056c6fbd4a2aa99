"""A Gmail push, from the HTTP endpoint or the HandlePush RPC: verify Google's token, find the mailbox (in ingest's
own table; auth is asked only about an address ingest has no row for), queue a sync pass, and only then say yes (so
an acknowledged push is never lost). Duplicate and out-of-order pushes are harmless: a pass always starts from the
stored cursor, and repeats of one push de-duplicate on the work stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from services.ingest import store
from services.ingest.mailboxes import MailboxDirectory
from services.ingest.push import PushTokenVerifier, parse_pubsub_message
from services.ingest.work import queue_sync
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database


@dataclass(frozen=True)
class PushOutcome:
    mailbox_id: str
    queued: bool


class PushIntake:
    def __init__(
        self,
        *,
        verifier: PushTokenVerifier,
        directory: MailboxDirectory,
        db: Database,
        js: JetStreamContext,
        clock: Clock | None = None,
    ) -> None:
        self._verifier = verifier
        self._directory = directory
        self._db = db
        self._js = js
        self._clock = clock or SystemClock()

    async def accept(self, token: str | None, data: Any, pubsub_message_id: str) -> PushOutcome:
        """Raises PushRejected for a bad token or body; returns once the pass is durably queued."""
        await self._verifier.verify(token)
        note = parse_pubsub_message(data, pubsub_message_id)
        # A mailbox ingest syncs has a row (made by its connection event or its first pass): no call to auth.
        pushed_at = self._clock.now()
        async with self._db.write(brief=True) as session:
            mailbox_id = await store.note_push(session, note.email_address, note.history_id, now=pushed_at)
        if mailbox_id is None:
            mailbox = await self._directory.get_mailbox(email=note.email_address)
            if mailbox is None:
                # Acknowledged and ignored: Pub/Sub would otherwise redeliver a push for a mailbox we do not sync.
                return PushOutcome("", False)
            mailbox_id = mailbox.mailbox_id
            async with self._db.write() as session:
                await store.ensure_mailbox(session, mailbox.mailbox_id, mailbox.email)
                await store.note_seen_history(session, mailbox.mailbox_id, note.history_id, now=pushed_at)
        await queue_sync(
            self._js,
            mailbox_id,
            note.email_address,
            reason="PUSH",
            msg_id=f"push:{mailbox_id}:{note.history_id}",
            now=self._clock.now(),
            history_id=note.history_id,
        )
        return PushOutcome(mailbox_id, True)
