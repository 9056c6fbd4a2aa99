"""The periodic task keeps running after a failing pass and ends when stopped."""

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
