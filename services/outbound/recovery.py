"""The outbound recovery loop: at start and then periodically, settles the sends a crashed or unanswered process
left unsettled (searching Sent before any new Gmail call), and forgets attachments nobody sent in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.outbound import store
from services.outbound.sending import OutboundSender
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database

log = logging.getLogger(__name__)


class RecoveryLoop:
    def __init__(
        self, db: Database, sender: OutboundSender, *, interval_seconds: float, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._sender = sender
        self._interval = interval_seconds
        self._clock = clock or SystemClock()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("outbound recovery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)

    async def run_once(self) -> None:
        while await self._sender.recover_due() and not self._stopping.is_set():
            pass
        async with self._db.write() as session:
            await store.delete_expired_attachments(session, now=self._clock.now())
