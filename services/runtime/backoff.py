"""The one doubling backoff every retry in the product follows: the first delay after the first failure, twice
that after the next, never more than a ceiling (each caller adds its own jitter where replicas could align)."""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

Delay = TypeVar("Delay", float, dt.timedelta)


def doubling_delay(first: Delay, ceiling: Delay, failures: int) -> Delay:
    """The delay after `failures` failures in a row (1 is the first; 0 counts as 1)."""
    return min(first * 2 ** max(failures - 1, 0), ceiling)
