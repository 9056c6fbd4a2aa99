"""A periodic background task for the service runner: a step every interval until stopped, surviving failures.

Every service's loops (watch renewal, key housekeeping, ingest's scheduler, outbound's send recovery) use it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Periodic:
    """Runs `step` every `interval` until stopped; a failing pass is logged and the next one still runs."""

    name: str
    step: Callable[[], Awaitable[object]]
    interval: dt.timedelta
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("periodic task failed", extra={"task": self.name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval.total_seconds())

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a long step checks it to end early."""
        return self._stopping.is_set()
