"""Bounded exponential backoff with jitter for Gmail calls, on a clock and a random source that tests control."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.runtime.backoff import doubling_delay
from services.runtime.clock import Clock, SystemClock

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient Gmail failure.

    The delay before retry n (0-based) is min(max_delay, base_delay * 2**n) plus up to `jitter` of itself at
    random; a time Google names ("Retry after ...", Retry-After) replaces it when later, unless it is further
    away than `max_wait`, in which case the error goes to the caller, who can park the work instead of sleeping.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 32.0
    jitter: float = 0.5
    max_wait: float = 120.0

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        ceiling = doubling_delay(self.base_delay, self.max_delay, retry_number + 1)
        return ceiling * (1.0 + self.jitter * rng.random())


@dataclass
class RetryTiming:
    """Where retries get their time, randomness and sleep from (all replaceable in tests)."""

    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    sleep: Sleep = asyncio.sleep

    def delay_for(self, policy: RetryPolicy, retry_number: int, retry_at: dt.datetime | None) -> float | None:
        """Seconds to wait before the next try, or None when Google's requested wait exceeds the policy."""
        delay = policy.backoff(retry_number, self.rng)
        if retry_at is not None:
            asked = (retry_at - self.clock.now()).total_seconds()
            if asked > policy.max_wait:
                return None
            delay = max(delay, asked)
        return delay
