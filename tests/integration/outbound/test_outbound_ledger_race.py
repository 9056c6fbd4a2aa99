"""R14 across replicas: 600 concurrent sends for one mailbox from three processes, limit 500, on each database.

The negative control runs the same race with the ledger's mailbox lock switched off and shows over-admission:
on PostgreSQL the count-then-insert without FOR UPDATE under READ COMMITTED; on SQLite the driver's own
transaction handling, which runs the count outside the write transaction (reference/reliability.md 3.2).
"""

from __future__ import annotations

import multiprocessing
import queue
import uuid

from sqlalchemy import func, select

from services.outbound.ledger import SendLedger, send_ledger_entries
from services.runtime.db import Database
from tests.fixtures.databases import DatabaseTarget
from tests.integration.outbound.ledger_race import RaceWorker, create_ledger_tables, run_worker

PROCESSES = 3
ATTEMPTS_PER_PROCESS = 200
DAILY_LIMIT = 500


def _race(
    target: DatabaseTarget, *, lock_mailbox: bool, driver_managed_sqlite: bool = False
) -> dict[str, int]:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    mailbox_id = f"mbx-{uuid.uuid4().hex[:8]}"
    workers = [
        context.Process(
            target=run_worker,
            args=(
                RaceWorker(
                    url=target.url,
                    schema=target.schema,
                    mailbox_id=mailbox_id,
                    key_prefix=f"p{index}",
                    attempts=ATTEMPTS_PER_PROCESS,
                    daily_limit=DAILY_LIMIT,
                    lock_mailbox=lock_mailbox,
                    driver_managed_sqlite=driver_managed_sqlite,
                ),
                start,
                results,
            ),
        )
        for index in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    totals: dict[str, int] = {}
    try:
        for _ in workers:
            for outcome, count in results.get(timeout=120).items():
                totals[outcome] = totals.get(outcome, 0) + count
    except queue.Empty:
        raise AssertionError("a race worker did not report within 120 s") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    return totals


async def _entries(database: Database) -> int:
    async with database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(send_ledger_entries)) or 0)


async def test_R14_600_concurrent_sends_from_three_processes_admit_exactly_500(
    database_target: DatabaseTarget, database: Database
) -> None:
    await create_ledger_tables(database)
    outcomes = _race(database_target, lock_mailbox=True)
    assert outcomes == {"admitted": 500, "refused": 100}
    assert await _entries(database) == 500
    async with database.read() as session:
        mailbox_ids = (
            (await session.execute(select(send_ledger_entries.c.mailbox_id).distinct())).scalars().all()
        )
        quota = await SendLedger().read_quota(session, mailbox_id=mailbox_ids[0])
    assert (quota.used, quota.remaining) == (500, 0)


async def test_R14_negative_control_without_the_mailbox_lock_the_limit_is_over_admitted(
    database_target: DatabaseTarget, database: Database
) -> None:
    await create_ledger_tables(database)
    outcomes = _race(
        database_target, lock_mailbox=False, driver_managed_sqlite=database_target.backend == "sqlite"
    )
    admitted = outcomes.get("admitted", 0)
    assert admitted > DAILY_LIMIT, outcomes
    assert await _entries(database) == admitted
