"""Waiting at startup for a dependency (NATS, the database, its migrations) to appear, with backoff.

In a cluster, pods start in any order: a service that finds NATS or PostgreSQL unreachable waits (its health
says NOT_SERVING meanwhile) instead of exiting and being restarted in a loop. A wrong setting is still fatal at
once (exit 2): only failures the caller marks as transient are waited out. The wait logs one WARNING when it
begins (what, which setting, why) and one INFO line with the count of failed attempts when it ends, never a line
per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from services.runtime.backoff import doubling_delay

log = logging.getLogger(__name__)

T = TypeVar("T")
EXIT_UNAVAILABLE = 69
"""sysexits.h EX_UNAVAILABLE: a dependency stayed unreachable for the whole allowed wait (not a bad setting)."""


class TransientFailure(RuntimeError):
    """The dependency is not there yet (refused, unresolvable, starting up); trying again may succeed."""


class DependencyUnavailable(RuntimeError):
    """The dependency stayed unreachable for the whole allowed wait; the message is one line naming it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a wait paces its attempts: exponential backoff with jitter, and an optional overall limit."""

    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 10.0
    give_up_after_seconds: float = 0.0
    """0 waits forever."""

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = doubling_delay(self.first_delay_seconds, self.max_delay_seconds, failures)
        # Full jitter in the upper half: replicas that lost the same dependency do not retry in lockstep.
        return ceiling * (0.5 + rng.random() / 2)


async def wait_for(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    variable: str,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> T:
    """Runs `attempt` until it returns; a TransientFailure is retried after a backoff, anything else propagates.

    `what` names the dependency ("NATS at nats://nats:4222") and `variable` the setting that points at it, so the
    one warning says what to check. Raises DependencyUnavailable when `policy.give_up_after_seconds` passes.
    """
    rng = rng or random.Random()
    started = time.monotonic()
    failures = 0
    while True:
        try:
            result = await attempt()
        except TransientFailure as exc:
            failures += 1
            waited = time.monotonic() - started
            if failures == 1:
                log.warning(
                    "waiting for a dependency",
                    extra={"dependency": what, "setting": variable, "reason": str(exc)},
                )
            else:
                log.debug(
                    "still waiting", extra={"dependency": what, "attempts": failures, "reason": str(exc)}
                )
            if policy.give_up_after_seconds and waited >= policy.give_up_after_seconds:
                raise DependencyUnavailable(
                    f"{variable}: {what} stayed unreachable for {waited:.0f} s ({failures} attempts): {exc}"
                ) from None
            delay = policy.delay(failures, rng)
            if policy.give_up_after_seconds:
                delay = min(delay, max(policy.give_up_after_seconds - waited, 0.0))
            await asyncio.sleep(delay)
            continue
        if failures:
            log.info(
                "dependency reachable after waiting",
                extra={
                    "dependency": what,
                    "failed_attempts": failures,
                    "waited_seconds": round(time.monotonic() - started, 1),
                },
            )
        return result
