"""The periodic task keeps running after a failing pass and ends when stopped; a step asked for comes sooner than
the interval would bring it."""

from __future__ import annotations

import asyncio
import datetime as dt

from services.runtime.periodic import Periodic


async def test_a_failing_pass_does_not_end_the_task_and_stop_does() -> None:
    passes: list[int] = []
    third_pass = asyncio.Event()

    async def step() -> None:
        passes.append(len(passes))
        if len(passes) == 3:
            third_pass.set()
        if len(passes) == 1:
            raise RuntimeError("the first pass fails")

    periodic = Periodic("test", step, dt.timedelta(milliseconds=1))
    task = asyncio.create_task(periodic.run())
    async with asyncio.timeout(10):
        await third_pass.wait()
    periodic.stop()
    async with asyncio.timeout(10):
        await task
    assert task.done() and task.exception() is None and len(passes) >= 3


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
    task = asyncio.create_task(periodic.run())
    await asyncio.sleep(0)
    periodic.step_in(0.01)
    async with asyncio.timeout(10):
        await second_step.wait()
    periodic.stop()
    async with asyncio.timeout(10):
        await task
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
    task = asyncio.create_task(periodic.run())
    async with asyncio.timeout(10):
        await asked_again.wait()
    periodic.stop()
    async with asyncio.timeout(10):
        await task
    assert steps == 2
