"""A send's `sent` record and its Sent copy handled at the same moment by two consumers give one CRM message, on
SQLite and PostgreSQL (the chaos tier's `sends-threading` once showed an R5 message beside its R6 record).

Each run records the send's `pending`, then applies `sent` and the Sent copy concurrently, each through its own
`MessageSync` (two consumers, two transactions interleaved at every await). The copy comes with its wait budget
spent, as after threading's ack wait, so it is placed rather than held back: R5 when it sees no `sent`, the send's
message when it does. Whatever the interleaving, the location must show the send once, as the in-order delivery
does. Without the copy lock, both transactions read their view before the other committed and both commit.
"""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.clock import FrozenClock
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import at
from tests.integration.threading.test_send_orders import Case, _deliver, _outcome, _prepare

RUNS = 10


async def _race(db, case: Case) -> None:
    """`pending` first, then `sent` and the Sent copy concurrently (a retried batch simply runs again)."""
    await _deliver(db, case, ("pending",), batch=False, waits=True)
    answer = MessageSync(db, clock=FrozenClock(at(40))).apply_batch(
        [case.operation("answer", may_wait=False)]
    )
    copy = MessageSync(db, clock=FrozenClock(at(40))).apply_batch([case.operation("copy", may_wait=False)])
    await asyncio.gather(answer, copy)


@pytest.mark.parametrize("ids", ["replaced", "after_response"])
async def test_R6_a_sent_record_and_its_sent_copy_applied_concurrently_give_one_message(
    threading_db, ids
) -> None:
    reference = Case(0, False, ids)
    await _prepare(threading_db, reference)
    await _deliver(threading_db, reference, ("pending", "answer", "copy"), batch=False, waits=True)
    expected = await _outcome(threading_db, reference)
    failures = []
    for run in range(1, RUNS + 1):
        case = Case(run, False, ids)
        await _prepare(threading_db, case)
        await _race(threading_db, case)
        try:
            got = await _outcome(threading_db, case)
        except AssertionError as exc:
            failures.append((run, str(exc).splitlines()[0]))
            continue
        if got != expected:
            failures.append((run, got))
    assert failures == [], (
        f"{len(failures)} of {RUNS} races differ from the in-order {expected}: {failures[:3]}"
    )
