"""One message through the rules and into the store, in one transaction: load what the store knows, decide (pure),
write the decision, and let the caller stage its events in the same transaction (so the outbox never lies)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.threading.domain.model import Decision, IncomingMessage, Outcome, message_key
from services.threading.domain.rules import decide
from services.threading.store.placements import (
    Applied,
    CrmSendInput,
    GmailCopyState,
    MessageContent,
    apply_gmail_change,
    copy_decided,
    load_knowledge,
    record_decision,
    record_pending_send,
    record_send_failed,
    record_send_sent,
    seen_key_of,
    was_seen,
)

# Called inside the write transaction with what changed, to stage events through the outbox.
EventSink = Callable[[AsyncSession, Applied], Awaitable[None]]


async def _no_events(_session: AsyncSession, _applied: Applied) -> None:
    return None


class MessageSync:
    """The threading service's write side, shared by the consumers and the tests."""

    def __init__(self, db: Database, *, clock: Clock | None = None, events: EventSink | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._events = events or _no_events

    async def apply_message(
        self,
        message: IncomingMessage,
        content: MessageContent,
        *,
        may_wait: bool = True,
        copy_state: GmailCopyState | None = None,
    ) -> Decision:
        """Decides where the message belongs and stores it; a wait outcome writes nothing."""
        async with self._db.write() as session:
            if await copy_decided(session, seen_key_of(message)):
                # A copy is decided once, at first sight: a redelivery must not re-decide with what the store
                # learned since (that would make the result depend on redeliveries and arrival order).
                return Decision(Outcome.DECIDED, message_key(message))
            knowledge = await load_knowledge(session, message, message_key(message))
            decision = decide(message, knowledge, may_wait=may_wait)
            if decision.outcome is not Outcome.DECIDED:
                return decision
            applied = await record_decision(
                session, message, content, decision, now=self._clock.now(), copy_state=copy_state
            )
            await self._events(session, applied)
        return decision

    async def apply_pending_send(self, send: CrmSendInput, content: MessageContent) -> Applied:
        async with self._db.write() as session:
            applied = await record_pending_send(session, send, content, now=self._clock.now())
            await self._events(session, applied)
        return applied

    async def apply_sent(
        self,
        send: CrmSendInput,
        content: MessageContent,
        *,
        gmail_message_id: str,
        gmail_thread_id: str,
        final_rfc_message_id: str,
    ) -> Applied:
        async with self._db.write() as session:
            applied = await record_send_sent(
                session,
                send,
                content,
                gmail_message_id=gmail_message_id,
                gmail_thread_id=gmail_thread_id,
                final_rfc_message_id=final_rfc_message_id,
                now=self._clock.now(),
            )
            await self._events(session, applied)
        return applied

    async def apply_send_failed(self, send_id: str, reason: str) -> None:
        async with self._db.write() as session:
            await record_send_failed(session, send_id, reason)

    async def apply_gmail_change(
        self,
        *,
        mailbox_id: str,
        gmail_message_id: str,
        history_id: int,
        labels: tuple[str, ...] | None = None,
        labels_added: tuple[str, ...] = (),
        labels_removed: tuple[str, ...] = (),
        deleted: bool = False,
    ) -> int:
        async with self._db.write() as session:
            return await apply_gmail_change(
                session,
                mailbox_id=mailbox_id,
                gmail_message_id=gmail_message_id,
                history_id=history_id,
                now=self._clock.now(),
                labels=labels,
                labels_added=labels_added,
                labels_removed=labels_removed,
                deleted=deleted,
            )

    async def has_seen(self, mailbox_id: str, gmail_message_id: str) -> bool:
        """Whether a copy with this Gmail id was ever handed to the rules (placed or not)."""
        async with self._db.read() as session:
            return await was_seen(session, mailbox_id, gmail_message_id)
