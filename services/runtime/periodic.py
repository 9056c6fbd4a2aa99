"""A periodic background task for the service runner: a step every interval until stopped, surviving failures.

Every service's loops (watch renewal, key housekeeping, ingest's scheduler, outbound's send recovery) use it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Steps asked for within this much of each other share one step: a thousand mailboxes' re-checks falling due
# over a second cost at most this many steps, not a thousand.
STEP_COALESCE_SECONDS = 0.05


@dataclass
class Periodic:
    """Runs `step` every `interval` until stopped; a failing pass is logged and the next one still runs.

    `step_in(seconds)` asks for a step that soon when something falls due before the next interval would come."""

    name: str
    step: Callable[[], Awaitable[object]]
    interval: dt.timedelta
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # Set by `step_in` and `stop`: the wait looks again at when to wake.
    _asked: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    # Event-loop times of the steps asked for, soonest first (rounded up to STEP_COALESCE_SECONDS).
    _wanted: list[float] = field(default_factory=list, init=False)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                await self.step()
            except Exception:
                log.exception("periodic task failed", extra={"task": self.name})
            # A step sees everything that fell due before it began; what falls due later is still wanted.
            while self._wanted and self._wanted[0] <= started:
                heapq.heappop(self._wanted)
            await self._wait(loop, loop.time() + self.interval.total_seconds())

    async def _wait(self, loop: asyncio.AbstractEventLoop, next_tick: float) -> None:
        """Until the next tick, the soonest step asked for, or stop."""
        while not self._stopping.is_set():
            self._asked.clear()
            wake = min(next_tick, self._wanted[0]) if self._wanted else next_tick
            if wake <= loop.time():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), wake - loop.time())

    def step_in(self, seconds: float) -> None:
        """Asks for a step `seconds` from now (or a little later, shared with others asked for around then)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, seconds)
        at = (int(at / STEP_COALESCE_SECONDS) + 1) * STEP_COALESCE_SECONDS
        if at in self._wanted:
            return
        heapq.heappush(self._wanted, at)
        self._asked.set()

    def stop(self) -> None:
        self._stopping.set()
        self._asked.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a long step checks it to end early."""
        return self._stopping.is_set()
