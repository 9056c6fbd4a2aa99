"""Per-user pacing of Gmail requests to Google's per-user quota, so that a busy mailbox fetches at the limit
instead of being refused and backing off.

Google counts quota units per user over a moving window (reference/gmail_api.md 4.1): 250 units per second in
the legacy table, 6,000 per minute in the 2026 table; a batch costs each of its parts. A `UserPacer` keeps the
units of one user's requests that are in flight or were answered less than a window ago, and lets a request go
only when its units fit. A request's units stay counted until one window after its answer came back: Google
charged it somewhere between our send and that answer, so by then it has left Google's window whatever the
network did. A batch asks for as many parts as fit (at least one) and the caller sends that many, so a budget is
never wasted on a batch that does not fit whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.runtime.gmail.quota import QUOTA_TABLES

# (units, window seconds) per user: "250 quota units per user per second, moving average" (legacy) and "6,000
# units per minute per user per project" (as of May 2026).
USER_RATES: dict[str, tuple[int, float]] = {"legacy": (250, 1.0), "2026": (6000, 60.0)}
# A few idle pacers are kept; past this many, those with nothing in their window are dropped.
_KEPT_IDLE_PACERS = 1024


@dataclass(frozen=True)
class QuotaBudget:
    """How much one user may spend: `units` per `window_seconds`, costed by `table`."""

    table: str = "legacy"
    units: int = 250
    window_seconds: float = 1.0
    # Added to the window: clocks of two machines do not tick at exactly the same rate.
    margin_seconds: float = 0.01

    @classmethod
    def for_table(cls, table: str) -> QuotaBudget:
        """Google's per-user rate for `table` ("legacy" or "2026")."""
        if table not in USER_RATES:
            raise ValueError(f"unknown Gmail quota table {table!r}: legacy or 2026")
        units, window = USER_RATES[table]
        return cls(table=table, units=units, window_seconds=window, margin_seconds=window / 100)

    def cost(self, method: str) -> int:
        """Units one call of `method` (as in the discovery document, e.g. users.messages.get) costs."""
        return QUOTA_TABLES[self.table].get(method, 5)


@dataclass
class _Spend:
    units: int
    answered_at: float | None = None


@dataclass
class Grant:
    """Permission to send `count` requests of a method now; `release` when the answer is back."""

    count: int
    _spend: _Spend
    _pacer: UserPacer
    _answered_hint: float | None = None

    def answered(self) -> None:
        """The answer has arrived (safe from any thread): the moment `release` dates the spend to."""
        self._answered_hint = self._pacer.clock()

    def release(self) -> None:
        """Back on the event loop, once the call is over: the units leave the window a window after the answer."""
        if self._spend.answered_at is None:
            self._spend.answered_at = self._answered_hint or self._pacer.clock()
            self._pacer.wake()


@dataclass
class UserPacer:
    """One user's moving window of quota units (in flight, or answered less than a window ago)."""

    budget: QuotaBudget
    clock: Callable[[], float] = time.monotonic
    _spent: deque[_Spend] = field(default_factory=deque)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    def _in_window(self, now: float) -> tuple[int, float | None]:
        """Units still counted now, and when the next counted units leave the window (None: none will before
        an answer comes back)."""
        keep = self.budget.window_seconds + self.budget.margin_seconds
        while (
            self._spent
            and self._spent[0].answered_at is not None
            and self._spent[0].answered_at + keep <= now
        ):
            self._spent.popleft()
        counted, next_expiry = 0, None
        for spend in self._spent:
            if spend.answered_at is None:
                counted += spend.units
                continue
            leaves = spend.answered_at + keep
            if leaves <= now:
                continue
            counted += spend.units
            next_expiry = leaves if next_expiry is None else min(next_expiry, leaves)
        return counted, next_expiry

    def idle(self) -> bool:
        return not self.waiting and self._in_window(self.clock())[0] == 0

    def wake(self) -> None:
        self._changed.set()

    async def acquire(self, units_each: int, wanted: int = 1) -> Grant:
        """Waits until `wanted` requests of `units_each` fit, or as many as a whole window holds when that is
        fewer, then grants them. Granting whatever fits as soon as one part does would split a burst into many
        small batches as the window frees unit by unit, and each batch is an HTTP request of its own. A request
        larger than the whole budget goes alone once nothing else is counted."""
        full = min(wanted, self.budget.units // units_each) if units_each > 0 else wanted
        self.waiting += 1
        try:
            while True:
                now = self.clock()
                counted, next_expiry = self._in_window(now)
                room = self.budget.units - counted
                count = min(wanted, room // units_each) if units_each > 0 else wanted
                if count >= max(full, 1) or counted == 0:
                    count = max(1, count)
                    spend = _Spend(units_each * count)
                    self._spent.append(spend)
                    return Grant(count, spend, self)
                self._changed.clear()
                timeout = None if next_expiry is None else max(0.0, next_expiry - now)
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            self.waiting -= 1


class UserPacers:
    """The pacers of every user one process talks to, by a key that names the user."""

    def __init__(self, budget: QuotaBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._pacers: dict[str, UserPacer] = {}

    def pacer(self, user_key: str) -> UserPacer:
        found = self._pacers.get(user_key)
        if found is None:
            if len(self._pacers) >= _KEPT_IDLE_PACERS:
                for key in [k for k, p in self._pacers.items() if p.idle()]:
                    del self._pacers[key]
            found = self._pacers[user_key] = UserPacer(self.budget, self._clock)
        return found


def user_key_of_token(access_token: str) -> str:
    """A pacing key for a user known only by an access token (kept as a digest, never as the token)."""
    return "token:" + hashlib.sha256(access_token.encode()).hexdigest()[:24]
