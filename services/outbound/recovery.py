"""The outbound recovery loop: at start and then every few seconds, settles the sends that a crashed process (known
dead at once by its liveness lock), an expired lease or an unknown outcome left unsettled (searching Sent before
any new Gmail call), reads the Message-IDs Gmail kept that were not readable right after a send, and forgets
attachments nobody sent in time."""

from __future__ import annotations

import datetime as dt
import logging

from services.outbound import store
from services.outbound.liveness import ProcessLiveness
from services.outbound.sending import OutboundSender
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.periodic import Periodic

log = logging.getLogger(__name__)

_PASS = 50


class RecoveryLoop:
    def __init__(
        self,
        db: Database,
        sender: OutboundSender,
        liveness: ProcessLiveness,
        *,
        interval_seconds: float,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._sender = sender
        self._liveness = liveness
        self._clock = clock or SystemClock()
        self._periodic = Periodic("send-recovery", self.run_once, dt.timedelta(seconds=interval_seconds))
        self.run = self._periodic.run
        self.stop = self._periodic.stop

    async def run_once(self) -> None:
        await self._liveness.check()
        # Another pass right away only after a full one (a backlog after a long outage); a send whose recovery
        # fails waits for the next interval instead of being retried in a tight loop.
        while await self._sender.recover_due(limit=_PASS) >= _PASS and not self._periodic.stopping:
            pass
        await self._sender.confirm_message_ids()
        async with self._db.write() as session:
            forgotten = await store.delete_expired_attachments(session, now=self._clock.now())
        if forgotten:
            log.info("forgot expired attachment uploads", extra={"count": forgotten})
