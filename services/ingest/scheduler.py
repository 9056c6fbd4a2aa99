"""Queues the sync passes nobody pushed: re-checks shortly after a pass that had work (Google drops pushes above
one per second per mailbox), the periodic safety poll, and retries of backed-off mailboxes. The due times live in
the database, so they survive restarts and any number of replicas can run the scheduler: the one that moves a
due time forward queues the pass, and the work item's Nats-Msg-Id covers the rest."""

from __future__ import annotations

import datetime as dt
import logging

from nats.js import JetStreamContext
from opentelemetry.trace import TracerProvider

from services.ingest import store
from services.ingest.sync_policy import SyncTiming
from services.ingest.work import queue_sync
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.periodic import Periodic

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
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._db = db
        self._js = js
        self._timing = timing
        self._batch = batch
        self._clock = clock or SystemClock()
        self._tracer_provider = tracer_provider
        self._periodic = Periodic("sync-scheduler", self.queue_due, dt.timedelta(seconds=interval_seconds))
        self.run = self._periodic.run
        self.stop = self._periodic.stop

    def expect_check_in(self, seconds: float) -> None:
        """A check falls due in `seconds` (a pass set a re-check): it is queued then, not at the next tick."""
        self._periodic.step_in(seconds)

    async def queue_due(self) -> int:
        """Queues a pass for every mailbox whose check is due; returns how many were queued."""
        now = self._clock.now()
        # Until the queued pass sets its own next check, the safety poll stands behind it.
        until = now + self._timing.safety_poll_interval
        # One query and one update for every due mailbox: a thousand mailboxes' checks cost two statements. The
        # query is read first, so a step with nothing due (most of an idle service's) takes no write lock; the
        # update moves only checks still due, so schedulers that read the same ones queue each once.
        async with self._db.read() as session:
            due = await store.due_checks(session, now=now, limit=self._batch)
        if not due:
            return 0
        async with self._db.write() as session:
            claimed = await store.postpone_checks(session, due, now=now, until=until)
        for check in claimed:
            await queue_sync(
                self._js,
                check.mailbox_id,
                check.mailbox_email,
                reason=check.reason,
                msg_id=f"check:{check.mailbox_id}:{int(check.due_at.timestamp() * 1000)}",
                now=now,
                # The pass starts a trace of its own, linked to the pass that scheduled it (docs/observability.md).
                caused_by=check.caused_by,
                tracer_provider=self._tracer_provider,
            )
        return len(claimed)
