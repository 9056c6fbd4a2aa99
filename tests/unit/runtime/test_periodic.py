"""The periodic task keeps running after a failing pass and ends when stopped; a step asked for comes sooner than
the interval would bring it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.runtime.periodic import Periodic


@asynccontextmanager
async def running(periodic: Periodic) -> AsyncIterator[None]:
    task = asyncio.create_task(periodic.run())
    await asyncio.sleep(0)
    yield
    periodic.stop()
    async with asyncio.timeout(10):
        await task
    assert task.done() and task.exception() is None


async def until(event: asyncio.Event) -> None:
    async with asyncio.timeout(10):
        await event.wait()


async def test_a_failing_pass_does_not_end_the_task_and_stop_does() -> None:
    passes: list[int] = []
    third_pass = asyncio.Event()

    async def step() -> None:
        passes.append(len(passes))
        if len(passes) == 3:
            third_pass.set()
        if len(passes) == 1:
            raise RuntimeError("the first pass fails")

    async with running(Periodic("test", step, dt.timedelta(milliseconds=1))):
        await until(third_pass)
    assert len(passes) >= 3


async def test_a_step_asked_for_comes_before_the_interval_would_bring_it() -> None:
    steps = 0
    second_step = asyncio.Event()

    async def step() -> None:
        nonlocal steps
        steps += 1
        if steps == 2:
            second_step.set()

    # With an hour between steps, a second step in the test's lifetime is one that was asked for.
    periodic = Periodic("test", step, dt.timedelta(hours=1))
    async with running(periodic):
        periodic.step_in(0.01)
        await until(second_step)
    assert steps == 2


async def test_a_step_asked_for_while_a_step_runs_is_not_lost() -> None:
    # A pass that finishes while the scheduler queues others sets a re-check for after that step: it still comes.
    steps = 0
    asked_again = asyncio.Event()
    periodic: Periodic

    async def step() -> None:
        nonlocal steps
        steps += 1
        if steps == 1:
            periodic.step_in(0.05)
        else:
            asked_again.set()

    periodic = Periodic("test", step, dt.timedelta(hours=1))
    async with running(periodic):
        await until(asked_again)
    assert steps == 2
