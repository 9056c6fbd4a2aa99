"""The transactional outbox: events are written in the same transaction as the change they report, then relayed.

`stage()` adds an outbox row in the caller's transaction (with the current trace context); `stage_many()` adds a
whole batch of events in one multi-row statement. `OutboxRelay` publishes unpublished rows in id order with their
`Nats-Msg-Id` and then marks them published, so a crash at any point loses no event and a repeated publish is
dropped by JetStream's de-duplication. The relay wakes right after a commit that staged events (an in-process
signal, once per transaction however many events it staged) and polls as a fallback (other processes, missed
signals). A pass publishes its rows pipelined (every publish sent, then the acks awaited together) and marks the
longest prefix that JetStream acknowledged, so an event never counts as published before one staged earlier.

On PostgreSQL the relay locks the rows it publishes (`FOR UPDATE SKIP LOCKED`), so two replicas share the work
instead of both publishing everything. On SQLite it reads, publishes and then marks in a short write transaction,
because holding SQLite's single write lock while waiting on NATS would stall the whole service during a NATS outage.
With several relays, events are published in order per relay, not globally: consumers rely on unique keys, not on
arrival order.

The relay's periodic housekeeping also forgets idempotency claims (`processed_messages`) older than
`claim_retention`, far beyond the time in which JetStream redelivers an acknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from nats.js import JetStreamContext
from opentelemetry.trace import TracerProvider
from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.faults import OUTBOX_AFTER_COMMIT, OUTBOX_AFTER_PUBLISH, fault_point
from services.runtime.inbox import prune_processed
from services.runtime.jetstream import publish_payload, trace_carrier
from services.runtime.messaging_tables import outbox_table

log = logging.getLogger(__name__)

_STAGED = "mailsync_outbox_staged"
_LISTENING = "mailsync_outbox_listening"

# Relays waiting for commits, by the connection pool they share with the sessions that stage events.
_wakers: dict[int, set[Callable[[], None]]] = {}
# One statement for any number of events (executemany: the compiled form is cached, the rows go in one round trip).
_INSERT_EVENT = insert(outbox_table)


@dataclass(frozen=True)
class StagedEvent:
    """One event to publish after the transaction commits."""

    subject: str
    message: Message
    msg_id: str


async def stage(
    session: AsyncSession, subject: str, message: Message, msg_id: str, *, clock: Clock | None = None
) -> None:
    """Writes the event into the outbox within the caller's transaction; it is published after the commit."""
    await stage_many(session, [StagedEvent(subject, message, msg_id)], clock=clock)


async def stage_many(
    session: AsyncSession, events: Sequence[StagedEvent], *, clock: Clock | None = None
) -> None:
    """Writes the events into the outbox in one statement, in order, within the caller's transaction."""
    if not events:
        return
    headers = trace_carrier()
    now = (clock or SystemClock()).now()
    await session.execute(
        _INSERT_EVENT,
        [
            {
                "subject": event.subject,
                "msg_id": event.msg_id,
                "payload": event.message.SerializeToString(),
                "trace_headers": headers,
                "created_at": now,
            }
            for event in events
        ],
    )
    sync_session = session.sync_session
    sync_session.info[_STAGED] = True
    if not sync_session.info.get(_LISTENING):
        sync_session.info[_LISTENING] = True
        event.listen(sync_session, "after_commit", _after_commit)
        event.listen(sync_session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    if not session.info.pop(_STAGED, False):
        return
    fault_point(OUTBOX_AFTER_COMMIT)
    for wake in list(_wakers.get(_pool_key(session.get_bind()), ())):
        wake()


def _after_rollback(session: Session) -> None:
    session.info.pop(_STAGED, None)


def _pool_key(bind: Any) -> int:
    return id(bind.pool)


@dataclass(frozen=True)
class OutboxStatus:
    """For metrics and health: how many events wait, and how long the oldest has waited."""

    pending: int
    oldest_pending_age: dt.timedelta | None


async def outbox_status(db: Database, *, clock: Clock | None = None) -> OutboxStatus:
    async with db.read() as session:
        pending, oldest = (
            await session.execute(
                select(func.count(), func.min(outbox_table.c.created_at)).where(
                    outbox_table.c.published_at.is_(None)
                )
            )
        ).one()
    age = (clock or SystemClock()).now() - _aware(oldest) if oldest is not None else None
    return OutboxStatus(pending=int(pending), oldest_pending_age=age)


class OutboxRelay:
    """Publishes staged events until `stop()`; run one per service process."""

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        *,
        clock: Clock | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retention: dt.timedelta = dt.timedelta(days=1),
        prune_interval: dt.timedelta = dt.timedelta(minutes=10),
        claim_retention: dt.timedelta = dt.timedelta(days=14),
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._db = db
        self._js = js
        self._clock = clock or SystemClock()
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retention = retention
        self._prune_interval = prune_interval
        self._claim_retention = claim_retention
        self._tracer_provider = tracer_provider
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._next_prune: dt.datetime | None = None

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        key = _pool_key(self._db.engine.sync_engine)
        _wakers.setdefault(key, set()).add(wake)
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    published = await self.publish_pending()
                    await self._prune_when_due()
                except Exception as exc:
                    log.warning("outbox relay pass failed: %r", exc)
                    published = 0
                if published >= self._batch_size:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
        finally:
            waiting = _wakers.get(key)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    _wakers.pop(key, None)

    async def publish_pending(self) -> int:
        """One pass: publishes up to a batch of unpublished events in order; returns how many it published."""
        if self._db.dialect == "postgresql":
            return await self._publish_locked()
        return await self._publish_then_mark()

    async def _publish_locked(self) -> int:
        async with self._db.write() as session:
            rows = (await session.execute(self._pending_query().with_for_update(skip_locked=True))).all()
            published = await self._publish_rows(rows)
            await self._mark(session, published)
        return len(published)

    async def _publish_then_mark(self) -> int:
        async with self._db.read() as session:
            rows = (await session.execute(self._pending_query())).all()
        published = await self._publish_rows(rows)
        if published:
            async with self._db.write(brief=True) as session:
                await self._mark(session, published)
        return len(published)

    def _pending_query(self) -> Any:
        table = outbox_table
        return (
            select(table.c.id, table.c.subject, table.c.msg_id, table.c.payload, table.c.trace_headers)
            .where(table.c.published_at.is_(None))
            .order_by(table.c.id)
            .limit(self._batch_size)
        )

    async def _publish_rows(self, rows: Any) -> list[int]:
        """Publishes the rows pipelined; returns the ids of the longest prefix JetStream acknowledged."""
        rows = list(rows)
        results = await asyncio.gather(
            *(
                publish_payload(
                    self._js,
                    row.subject,
                    row.payload,
                    msg_id=row.msg_id,
                    parent_headers=row.trace_headers or {},
                    tracer_provider=self._tracer_provider,
                )
                for row in rows
            ),
            return_exceptions=True,
        )
        published: list[int] = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                # Stop at the first failure so later events are not marked before it; the next pass publishes it
                # again, and the later ones too (their repeats are dropped by JetStream's de-duplication).
                log.warning("outbox publish of %s (%s) failed: %r", row.msg_id, row.subject, result)
                break
            fault_point(OUTBOX_AFTER_PUBLISH)
            published.append(row.id)
        return published

    async def _mark(self, session: AsyncSession, ids: list[int]) -> None:
        if not ids:
            return
        await session.execute(
            update(outbox_table)
            .where(outbox_table.c.id.in_(ids), outbox_table.c.published_at.is_(None))
            .values(published_at=self._clock.now())
        )

    async def _prune_when_due(self) -> None:
        now = self._clock.now()
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + self._prune_interval
        await self.housekeep()

    async def housekeep(self) -> None:
        """Deletes published events past `retention` and idempotency claims past `claim_retention`."""
        now = self._clock.now()
        await prune_published(self._db, older_than=now - self._retention)
        async with self._db.write() as session:
            await prune_processed(session, older_than=now - self._claim_retention)


async def prune_published(db: Database, *, older_than: dt.datetime) -> int:
    """Deletes events published before `older_than` (they only serve as a short audit trail)."""
    async with db.write() as session:
        result = await session.execute(
            delete(outbox_table).where(
                outbox_table.c.published_at.is_not(None), outbox_table.c.published_at < older_than
            )
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
