"""A batch of operations through the rules and into the store, in one transaction: load what the batch can reach
(a fixed number of queries), decide and apply each operation in order on that view, write the rows with one
statement per kind, and let the caller stage its events in the same transaction (so the outbox never lies).

When another writer committed a row the view said was absent (a replica deciding the same thread or copy on
PostgreSQL), or PostgreSQL picked this transaction as a deadlock victim, nothing is written and the batch is
decided again on a fresh view, a bounded number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.threading.domain.model import Decision, IncomingMessage
from services.threading.store.changes import ChangeSet, ConcurrentChange
from services.threading.store.copy_locks import lock_copies
from services.threading.store.operations import (
    ChangeGmailState,
    GmailChangeResult,
    Operation,
    OperationResult,
    PlaceMessage,
    RecordPendingSend,
    RecordSendFailed,
    RecordSent,
)
from services.threading.store.placements import BatchPlacement
from services.threading.store.snapshot import load_view
from services.threading.store.values import Applied, CrmSendInput, MessageContent

log = logging.getLogger(__name__)

# Called inside the write transaction with what changed, to stage events through the outbox.
EventSink = Callable[[AsyncSession, Applied], Awaitable[None]]

# PostgreSQL SQLSTATEs after which the whole transaction is simply tried again.
_RETRIABLE_SQLSTATES = frozenset({"40P01", "40001"})
# Batches up to this many operations run as brief write transactions (on SQLite, their statements run on the event
# loop's thread, not a trip each to the driver's): end to end most batches are this small, and their two dozen trips
# were most of a batch's cost. A bigger batch's SQLite work would hold the loop too long.
BRIEF_BATCH_OPERATIONS = 32


async def _no_events(_session: AsyncSession, _applied: Applied) -> None:
    return None


@dataclass(frozen=True)
class BatchResult:
    """Per operation, in order, what became of it; and what the batch changed."""

    results: list[OperationResult]
    applied: Applied


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, ConcurrentChange):
        return True
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in _RETRIABLE_SQLSTATES
    return False


class MessageSync:
    """The threading service's write side, shared by the consumers and the tests."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        events: EventSink | None = None,
        attempts: int = 5,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._events = events or _no_events
        self._attempts = attempts

    async def apply_batch(self, operations: Sequence[Operation]) -> BatchResult:
        """Applies the operations in order in one transaction; raises (nothing written) when that fails."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._db.write(brief=len(operations) <= BRIEF_BATCH_OPERATIONS) as session:
                    conn = await session.connection()
                    # Before the view is read: a concurrent `sent` and its Sent copy see each other's commit.
                    await lock_copies(conn, operations)
                    view = await load_view(conn, operations)
                    changes = ChangeSet()
                    results = BatchPlacement(view, changes, now=self._clock.now()).apply_all(operations)
                    applied = await changes.flush(conn)
                    await self._events(session, applied)
                return BatchResult(results, applied)
            except Exception as exc:
                if attempt == self._attempts or not _retriable(exc):
                    raise
                log.info(
                    "batch of %s met a concurrent change (attempt %s): %s", len(operations), attempt, exc
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def apply_message(
        self, message: IncomingMessage, content: MessageContent, *, may_wait: bool = True
    ) -> Decision:
        """Decides where the message belongs and stores it; a wait outcome writes nothing."""
        [result] = (await self.apply_batch([PlaceMessage(message, content, may_wait)])).results
        assert isinstance(result, Decision)
        return result

    async def apply_pending_send(self, send: CrmSendInput, content: MessageContent) -> Applied:
        return (await self.apply_batch([RecordPendingSend(send, content)])).applied

    async def apply_sent(
        self,
        send: CrmSendInput,
        content: MessageContent,
        *,
        gmail_message_id: str,
        gmail_thread_id: str,
        final_rfc_message_id: str,
    ) -> Applied:
        operation = RecordSent(send, content, gmail_message_id, gmail_thread_id, final_rfc_message_id)
        return (await self.apply_batch([operation])).applied

    async def apply_send_failed(self, send_id: str, reason: str) -> None:
        await self.apply_batch([RecordSendFailed(send_id, reason)])

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
        """R17 for one Gmail message; returns how many stored copies changed."""
        operation = ChangeGmailState(
            mailbox_id, gmail_message_id, history_id, labels, labels_added, labels_removed, deleted
        )
        [result] = (await self.apply_batch([operation])).results
        assert isinstance(result, GmailChangeResult)
        return result.changed
