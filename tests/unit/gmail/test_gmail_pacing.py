"""Unit: the per-user quota budget (reference/gmail_api.md 4.1) and how a pacer grants requests."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.gmail import QuotaBudget, UserPacer, UserPacers
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS


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


async def test_a_batch_waits_for_room_for_all_its_parts_instead_of_going_out_in_fragments() -> None:
    clock = ManualClock()
    pacer = UserPacer(QuotaBudget(units=250, window_seconds=1.0, margin_seconds=0.0), clock)
    first = await pacer.acquire(5, 25)
    second = await pacer.acquire(2, 1)
    # 125 + 2 units are counted: 24 gets would fit, but the batch of 25 waits rather than leave one part for a
    # request of its own.
    third = asyncio.create_task(pacer.acquire(5, 25))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done()
    second.release()
    clock.now += 1.0
    pacer.wake()
    grant = await asyncio.wait_for(third, timeout=HANG_BOUND_FLOOR_SECONDS)
    assert (first.count, grant.count) == (25, 25)


async def test_a_batch_larger_than_a_window_is_granted_a_window_at_a_time() -> None:
    pacer = UserPacer(QuotaBudget(units=250, window_seconds=1.0, margin_seconds=0.0), ManualClock())
    # 100 gets of 5 units never fit at once; a whole window's worth (50) goes, not one part at a time.
    assert (await pacer.acquire(5, 100)).count == 50


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
    grant = await asyncio.wait_for(waiting, timeout=HANG_BOUND_FLOOR_SECONDS)
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
