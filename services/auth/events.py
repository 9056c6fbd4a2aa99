"""Connection events (subject mailsync.v1.connection.<kind>.<mailbox_id>) staged in the transactional outbox by the
same transaction that changed the connections, with message ids derived from the change so a re-staged change is
de-duplicated by JetStream."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from mailsync.v1 import events_pb2
from services.auth.domain import ConnectionChange
from services.auth.proto_codec import EVENT_KIND_TO_PROTO, snapshot
from services.auth.store import connections_of_mailbox, get_mailbox
from services.runtime import outbox, subjects
from services.runtime.clock import Clock
from services.runtime.protobuf_time import optional_timestamp


def event_msg_id(change: ConnectionChange) -> str:
    """Stable per change: the connection, the event and the moment of its state change."""
    connection = change.connection
    micros = int(connection.state_change_time.timestamp() * 1_000_000)
    return f"auth-connection-{connection.connection_id}-{change.event.value.lower()}-{micros}"


@dataclass
class ConnectionEventStager:
    """The hooks ConnectionFlows (on_changes) and AccessTokens (on_grant_failed) call inside their transactions."""

    clock: Clock

    async def on_changes(self, session: AsyncSession, changes: tuple[ConnectionChange, ...]) -> None:
        for change in changes:
            await self._stage(session, change, reason="")

    async def on_grant_failed(
        self, session: AsyncSession, mailbox_id: str, changes: tuple[ConnectionChange, ...], reason: str
    ) -> None:
        for change in changes:
            await self._stage(session, change, reason=reason)

    async def _stage(self, session: AsyncSession, change: ConnectionChange, *, reason: str) -> None:
        connection = change.connection
        mailbox = await get_mailbox(session, connection.mailbox_id)
        siblings = await connections_of_mailbox(session, connection.mailbox_id)
        kind = change.event.value.lower()
        event = events_pb2.ConnectionEvent(
            event_id=event_msg_id(change),
            kind=EVENT_KIND_TO_PROTO[change.event],  # type: ignore[arg-type]
            mailbox_id=connection.mailbox_id,
            mailbox_email=mailbox.email if mailbox else "",
            connection=snapshot(connection),
            mailbox_connections=[snapshot(c) for c in siblings],
            replaced_by_connection_id=connection.replaced_by_connection_id or "",
            reason=reason or connection.last_error or "",
            event_time=optional_timestamp(connection.state_change_time),
        )
        await outbox.stage(
            session,
            subjects.connection(kind, connection.mailbox_id),
            event,
            msg_id=event.event_id,
            clock=self.clock,
        )
