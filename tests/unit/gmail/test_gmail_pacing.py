"""Unit: the per-user quota budget (reference/gmail_api.md 4.1) and how a pacer grants requests."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.gmail import QuotaBudget, UserPacer, UserPacers


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_two_tables_have_googles_per_user_rates_and_prices() -> None:
    legacy, new = QuotaBudget.for_table("legacy"), QuotaBudget.for_table("2026")
    assert (legacy.units, legacy.window_seconds) == (250, 1.0)
    assert (new.units, new.window_seconds) == (6000, 60.0)
    assert (legacy.cost("users.messages.get"), new.cost("users.messages.get")) == (5, 20)
    assert (legacy.cost("users.history.list"), new.cost("users.history.list")) == (2, 2)
    with pytest.raises(ValueError, match="legacy or 2026"):
        QuotaBudget.for_table("2025")


async def test_a_batch_is_granted_as_many_parts_as_fit() -> None:
    clock = ManualClock()
    pacer = UserPacer(QuotaBudget.for_table("legacy"), clock)
    first = await pacer.acquire(5, 25)
    second = await pacer.acquire(2, 1)
    third = await pacer.acquire(5, 25)
    # 125 + 2 units are counted: 24 more gets fit, not 25.
    assert (first.count, second.count, third.count) == (25, 1, 24)


async def test_units_stay_counted_until_a_window_after_the_answer() -> None:
    clock = ManualClock()
    pacer = UserPacer(QuotaBudget(units=10, window_seconds=1.0, margin_seconds=0.0), clock)
    held = await pacer.acquire(5, 2)
    waiting = asyncio.create_task(pacer.acquire(5, 1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # in flight: the answer has not come back
    held.release()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # answered, but less than a window ago
    clock.now += 1.0
    pacer.wake()  # what the pacer's own timer does when the window ends
    grant = await asyncio.wait_for(waiting, timeout=30)
    assert grant.count == 1


async def test_a_request_above_the_whole_budget_goes_alone() -> None:
    pacer = UserPacer(QuotaBudget(units=50, window_seconds=1.0), ManualClock())
    assert (await pacer.acquire(100, 1)).count == 1


def test_pacers_are_per_user_and_idle_ones_are_dropped_past_the_limit() -> None:
    pacers = UserPacers(QuotaBudget.for_table("legacy"))
    assert pacers.pacer("a") is pacers.pacer("a")
    assert pacers.pacer("a") is not pacers.pacer("b")
    for index in range(2000):
        pacers.pacer(f"user-{index}")
    assert len(pacers._pacers) <= 1025
