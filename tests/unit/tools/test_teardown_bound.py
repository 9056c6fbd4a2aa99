"""The bounded teardown step (tests/fixtures/teardown.py): a step that never ends, even one that swallows its
cancellation, is abandoned with a warning instead of hanging fixture finalization; a step's error still fails."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.teardown import TeardownAbandoned, bounded


async def test_a_stuck_step_that_ignores_cancellation_is_abandoned_with_a_warning() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # swallows it, as a stuck stop might

    with pytest.warns(TeardownAbandoned, match="the stubborn service did not finish"):
        await bounded(stubborn(), "the stubborn service", seconds=0.2)
    release.set()


async def test_a_finished_step_passes_and_a_failing_one_raises() -> None:
    done: list[str] = []

    async def stops() -> None:
        done.append("stopped")

    async def fails() -> None:
        raise RuntimeError("could not stop")

    await bounded(stops(), "a quick stop")
    assert done == ["stopped"]
    with pytest.raises(RuntimeError, match="could not stop"):
        await bounded(fails(), "a failing stop")
