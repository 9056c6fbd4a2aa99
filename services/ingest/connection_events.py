"""Connection events from auth, as ingest acts on them: a mailbox with no CONNECTED connection left stops
(replaced, disconnected: R10, R11) or pauses (reauth required: R12); a connected or reauthorized connection
resumes it from its stored cursor at once."""

from __future__ import annotations

from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.ingest import store
from services.ingest.connection_proto import connection_from_proto
from services.ingest.mailboxes import MailboxInfo
from services.ingest.sync_policy import SyncState
from services.ingest.work import queue_sync
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import Delivery
from services.runtime.db import Database

_RESUMING = {
    events_pb2.CONNECTION_EVENT_KIND_CONNECTED: "POLL",
    events_pb2.CONNECTION_EVENT_KIND_REAUTHORIZED: "REAUTHORIZED",
}


class ConnectionEventHandler:
    def __init__(self, *, db: Database, js: JetStreamContext, clock: Clock | None = None) -> None:
        self._db = db
        self._js = js
        self._clock = clock or SystemClock()

    async def handle(self, delivery: Delivery) -> None:
        event = delivery.parse(events_pb2.ConnectionEvent)
        mailbox = MailboxInfo(
            mailbox_id=event.mailbox_id,
            email=event.mailbox_email,
            connections=tuple(connection_from_proto(c) for c in event.mailbox_connections),
        )
        now = self._clock.now()
        async with self._db.write() as session:
            await store.ensure_mailbox(session, mailbox.mailbox_id, mailbox.email)
            if mailbox.connected:
                if event.kind not in _RESUMING:
                    return
                await store.set_state(
                    session, mailbox.mailbox_id, SyncState.IDLE, next_attempt_at=now, reset_failures=True
                )
            else:
                state = SyncState.PAUSED_REAUTH if mailbox.awaiting_reauth else SyncState.STOPPED
                await store.set_state(session, mailbox.mailbox_id, state)
                return
        # Committed before queuing: a pass that starts now sees the mailbox resumed.
        await queue_sync(
            self._js,
            mailbox.mailbox_id,
            mailbox.email,
            reason=_RESUMING[event.kind],
            msg_id=f"connection:{event.event_id or delivery.msg_id or delivery.stream_sequence}",
            now=now,
        )
