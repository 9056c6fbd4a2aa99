"""How long an accepted BCC drop's content is kept (R18): only while threading may still need it.

A drop's raw content is kept only when it has attachments (threading fetches nothing else from ingest), first for
`placement_grace` only. Ingest learns that threading placed the drop (stored it in a conversation) from threading's
`message.synced` event (matched by location and Message-ID) or from threading fetching one of its attachments
(threading fetches only for messages it placed); the content is then kept for `retention` (3 days by default)
after that, for fetches that are retried. A drop that threading decided not to place (no To recipient, or already
stored from the mailbox: R15) gets neither signal, so its content is forgotten when the grace ends.

Threading may be slow or down: an expired drop whose event is still waiting for threading (unpublished in ingest's
outbox, or still in the MAILSYNC_MESSAGES work stream, which deletes what threading acknowledged) is not
forgotten yet; its grace starts again, so a drop placed late still has its content.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsync.v1 import common_pb2, events_pb2
from services.ingest.message_proto import drop_msg_id, drop_subject
from services.ingest.store import BccDropContentRow, BccDropRow
from services.runtime import streams
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import Delivery
from services.runtime.db import Database
from services.runtime.jetstream import MSG_ID_HEADER
from services.runtime.messaging_tables import outbox_table

log = logging.getLogger(__name__)

_PURGE_BATCH = 500
# Undecided drop events looked at per location and purge pass; beyond, the location's drops count as undecided.
_MAX_WAITING_PER_LOCATION = 200


@dataclass(frozen=True)
class KeptDrop:
    drop_id: str
    location_id: str
    # The Nats-Msg-Id its NormalizedMessage was published with.
    event_msg_id: str
    event_subject: str


class UndecidedDrops(Protocol):
    async def undecided(self, db: Database, drops: list[KeptDrop]) -> set[str]:
        """The drop ids among `drops` whose event threading has not decided on yet."""
        ...


class DropEventQueue:
    """UndecidedDrops over ingest's outbox and the MAILSYNC_MESSAGES work stream (see the module doc)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def undecided(self, db: Database, drops: list[KeptDrop]) -> set[str]:
        by_msg_id = {drop.event_msg_id: drop for drop in drops}
        async with db.read() as session:
            result = await session.execute(
                select(outbox_table.c.msg_id).where(
                    outbox_table.c.msg_id.in_(list(by_msg_id)), outbox_table.c.published_at.is_(None)
                )
            )
            unpublished = {row[0] for row in result}
        waiting = {by_msg_id[msg_id].drop_id for msg_id in unpublished}
        for subject in {drop.event_subject for drop in drops}:
            in_stream, complete = await self._waiting_msg_ids(subject)
            for drop in drops:
                if drop.event_subject == subject and (not complete or drop.event_msg_id in in_stream):
                    waiting.add(drop.drop_id)
        return waiting

    async def _waiting_msg_ids(self, subject: str) -> tuple[set[str], bool]:
        """The Nats-Msg-Ids still in the work stream on `subject`, and whether that list is complete."""
        found: set[str] = set()
        sequence = 1
        for _ in range(_MAX_WAITING_PER_LOCATION):
            try:
                message = await self._js.get_msg(
                    streams.MESSAGES.name, seq=sequence, subject=subject, next=True
                )
            except NotFoundError:
                return found, True
            found.add((message.headers or {}).get(MSG_ID_HEADER, ""))
            sequence = (message.seq or sequence) + 1
        return found, False


class DropRetention:
    """Keeps, extends and forgets drop content (module doc); `run` is the periodic purge."""

    def __init__(
        self,
        db: Database,
        *,
        placement_grace: dt.timedelta,
        retention: dt.timedelta,
        undecided: UndecidedDrops | None,
        interval_seconds: float,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self.placement_grace = placement_grace
        self._retention = retention
        self._undecided = undecided
        self._interval = interval_seconds
        self._clock = clock or SystemClock()
        self._stopped = asyncio.Event()

    def first_expiry(self, now: dt.datetime) -> dt.datetime:
        return now + self.placement_grace

    async def placed(self, *, location_id: str, rfc_message_id: str) -> int:
        """Threading placed a drop with this Message-ID in this location: keep its content for the retention."""
        if not rfc_message_id:
            return 0
        until = self._clock.now() + self._retention
        drops = select(BccDropRow.drop_id).where(
            BccDropRow.location_id == location_id,
            BccDropRow.rfc_message_id == rfc_message_id,
            BccDropRow.accepted.is_(True),
        )
        async with self._db.write() as session:
            return await _extend(session, BccDropContentRow.drop_id.in_(drops), until)

    async def fetched(self, drop_id: str) -> None:
        """Threading fetched an attachment of this drop, which it does only for a drop it placed."""
        async with self._db.write() as session:
            await _extend(session, BccDropContentRow.drop_id == drop_id, self._clock.now() + self._retention)

    async def handle_synced(self, delivery: Delivery) -> None:
        """Consumer of `message.synced`: drops placed by threading (other messages are ignored)."""
        event = delivery.parse(events_pb2.MessageSynced)
        if event.source == common_pb2.MESSAGE_SOURCE_BCC_DROP:
            await self.placed(location_id=event.location_id, rfc_message_id=event.rfc_message_id)

    def stop(self) -> None:
        self._stopped.set()

    async def purge_once(self) -> int:
        """Forgets expired content whose drop threading has decided on; returns how many were forgotten."""
        now = self._clock.now()
        async with self._db.read() as session:
            result = await session.execute(
                select(BccDropContentRow.drop_id, BccDropRow.location_id, BccDropRow.content_digest)
                .join(BccDropRow, BccDropRow.drop_id == BccDropContentRow.drop_id, isouter=True)
                .where(BccDropContentRow.expires_at <= now)
                .limit(_PURGE_BATCH)
            )
            expired = [
                KeptDrop(drop_id, location_id or "", *_event_of(location_id or "", digest or ""))
                for drop_id, location_id, digest in result
            ]
        if not expired:
            return 0
        waiting = await self._undecided.undecided(self._db, expired) if self._undecided is not None else set()
        forgotten = [drop.drop_id for drop in expired if drop.drop_id not in waiting]
        async with self._db.write() as session:
            if waiting:
                await _extend(
                    session, BccDropContentRow.drop_id.in_(list(waiting)), now + self.placement_grace
                )
            if forgotten:
                await session.execute(
                    delete(BccDropContentRow).where(BccDropContentRow.drop_id.in_(forgotten))
                )
        if waiting:
            log.info("kept the content of %d drops threading has not decided on yet", len(waiting))
        return len(forgotten)

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                purged = await self.purge_once()
                if purged:
                    log.info("forgot the content of %d bcc drops (unplaced, or past their retention)", purged)
            except Exception:
                log.exception("bcc drop content purge failed; retried at the next interval")
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=self._interval)
            except TimeoutError:
                pass


def _event_of(location_id: str, content_digest: str) -> tuple[str, str]:
    if not location_id:
        return "", ""
    return drop_msg_id(location_id, content_digest), drop_subject(location_id)


async def _extend(session: AsyncSession, which: object, until: dt.datetime) -> int:
    """Moves the expiry of the matching content rows to `until` (never earlier than it is)."""
    result = await session.execute(
        update(BccDropContentRow)
        .where(which, BccDropContentRow.expires_at < until)  # type: ignore[arg-type]
        .values(expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
