"""Queues the sync passes nobody pushed: re-checks shortly after a pass that had work (Google drops pushes above
one per second per mailbox), the periodic safety poll, and retries of backed-off mailboxes. The due times live in
the database, so they survive restarts and any number of replicas can run the scheduler: the one that moves a
due time forward queues the pass, and the work item's Nats-Msg-Id covers the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext

from services.ingest import store
from services.ingest.sync_policy import SyncTiming
from services.ingest.work import queue_sync
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database

log = logging.getLogger(__name__)


class SyncScheduler:
    def __init__(
        self,
        *,
        db: Database,
        js: JetStreamContext,
        timing: SyncTiming,
        interval_seconds: float = 1.0,
        batch: int = 500,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._js = js
        self._timing = timing
        self._interval = interval_seconds
        self._batch = batch
        self._clock = clock or SystemClock()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.queue_due()
            except Exception as error:
                log.warning("scheduler tick failed", extra={"error": repr(error)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)

    async def queue_due(self) -> int:
        """Queues a pass for every mailbox whose check is due; returns how many were queued."""
        now = self._clock.now()
        # Until the queued pass sets its own next check, the safety poll stands behind it.
        until = now + self._timing.safety_poll_interval
        claimed: list[store.DueCheck] = []
        async with self._db.write() as session:
            for check in await store.due_checks(session, now=now, limit=self._batch):
                if await store.postpone_check(session, check, now=now, until=until):
                    claimed.append(check)
        for check in claimed:
            await queue_sync(
                self._js,
                check.mailbox_id,
                check.mailbox_email,
                reason=check.reason,
                msg_id=f"check:{check.mailbox_id}:{int(check.due_at.timestamp() * 1000)}",
                now=now,
            )
        return len(claimed)
