"""The outbound recovery loop: at start and then periodically, settles the sends a crashed or unanswered process
left unsettled (searching Sent before any new Gmail call), and forgets attachments nobody sent in time."""

from __future__ import annotations

import datetime as dt
import logging

from services.outbound import store
from services.outbound.sending import OutboundSender
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.periodic import Periodic

log = logging.getLogger(__name__)


class RecoveryLoop:
    def __init__(
        self, db: Database, sender: OutboundSender, *, interval_seconds: float, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._sender = sender
        self._clock = clock or SystemClock()
        self._periodic = Periodic("send-recovery", self.run_once, dt.timedelta(seconds=interval_seconds))
        self.run = self._periodic.run
        self.stop = self._periodic.stop

    async def run_once(self) -> None:
        while await self._sender.recover_due() and not self._periodic.stopping:
            pass
        async with self._db.write() as session:
            await store.delete_expired_attachments(session, now=self._clock.now())
