"""Startup waits: transient failures are retried with one warning, anything else is not, and a limited wait
ends with DependencyUnavailable naming the setting."""

from __future__ import annotations

import logging
import random

import pytest

from services.runtime.dependency_wait import (
    DependencyUnavailable,
    RetryPolicy,
    TransientFailure,
    wait_for,
)

QUICK = RetryPolicy(first_delay_seconds=0.001, max_delay_seconds=0.002)


def failing_times(count: int, error: Exception) -> object:
    calls = {"n": 0}

    async def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= count:
            raise error
        return "connected"

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


async def test_transient_failures_are_waited_out_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    attempt = failing_times(5, TransientFailure("connection refused"))
    with caplog.at_level(logging.DEBUG, logger="services.runtime.dependency_wait"):
        result = await wait_for(attempt, what="NATS at nats://x", variable="MAILSYNC_NATS_URL", policy=QUICK)  # type: ignore[arg-type]
    assert result == "connected"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].__dict__["setting"] == "MAILSYNC_NATS_URL"
    (done,) = [r for r in caplog.records if r.getMessage() == "dependency reachable after waiting"]
    assert done.__dict__["failed_attempts"] == 5


async def test_other_errors_are_not_retried() -> None:
    attempt = failing_times(1, ValueError("bad setting"))
    with pytest.raises(ValueError, match="bad setting"):
        await wait_for(attempt, what="x", variable="V", policy=QUICK)  # type: ignore[arg-type]
    assert attempt.calls["n"] == 1  # type: ignore[attr-defined]


async def test_a_limited_wait_gives_up_naming_the_setting() -> None:
    attempt = failing_times(10**9, TransientFailure("refused"))
    policy = RetryPolicy(first_delay_seconds=0.001, max_delay_seconds=0.002, give_up_after_seconds=0.05)
    with pytest.raises(DependencyUnavailable, match="MAILSYNC_NATS_URL: NATS at n stayed unreachable"):
        await wait_for(attempt, what="NATS at n", variable="MAILSYNC_NATS_URL", policy=policy)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() -> None:
    policy = RetryPolicy(first_delay_seconds=0.5, max_delay_seconds=10.0)
    rng = random.Random(7)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (30, 10.0)]:
        delay = policy.delay(failures, rng)
        assert ceiling / 2 <= delay <= ceiling
