"""A process that fires many concurrent admissions at one mailbox's send ledger, for the cross-replica race test.

Run through multiprocessing (spawn): each process has its own engine and pool, like a replica of the service.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from services.outbound.domain.errors import QuotaExceeded
from services.outbound.ledger import SendLedger, send_ledger_metadata
from services.runtime.db import Database, normalize_url, open_database


async def create_ledger_tables(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(send_ledger_metadata.create_all)


@dataclass(frozen=True)
class RaceWorker:
    url: str
    schema: str | None
    mailbox_id: str
    key_prefix: str
    attempts: int
    daily_limit: int
    lock_mailbox: bool
    # SQLite only: the driver's own transaction handling (BEGIN only before the INSERT), as a plain engine has.
    driver_managed_sqlite: bool = False
    concurrency: int = 4


def run_worker(worker: RaceWorker, start: Any, results: Any) -> None:
    """Process entry point: waits at the `start` barrier with its pool warm, then puts a Counter of outcomes."""
    results.put(asyncio.run(_race(worker, start)))


async def _race(worker: RaceWorker, start: Any) -> dict[str, int]:
    ledger = SendLedger(default_daily_limit=worker.daily_limit, lock_mailbox=worker.lock_mailbox)
    open_session, close = _sessions(worker)
    gate = asyncio.Semaphore(worker.concurrency)

    async def admit_one(index: int) -> str:
        async with gate:
            try:
                async with open_session() as session:
                    await ledger.admit(
                        session,
                        mailbox_id=worker.mailbox_id,
                        idempotency_key=f"{worker.key_prefix}-{index}",
                        recipients=1,
                    )
            except QuotaExceeded:
                return "refused"
            except Exception as error:
                return f"error {type(error).__name__}: {error}"[:200]
            return "admitted"

    try:
        await asyncio.gather(*(_warm(open_session) for _ in range(worker.concurrency)))
        await asyncio.to_thread(start.wait)
        outcomes = await asyncio.gather(*(admit_one(index) for index in range(worker.attempts)))
    finally:
        await close()
    return dict(collections.Counter(outcomes))


async def _warm(open_session: Callable[[], AbstractAsyncContextManager[AsyncSession]]) -> None:
    async with open_session() as session:
        await session.connection()


def _sessions(
    worker: RaceWorker,
) -> tuple[Callable[[], AbstractAsyncContextManager[AsyncSession]], Callable[[], Any]]:
    if worker.driver_managed_sqlite:
        engine = create_async_engine(normalize_url(worker.url), connect_args={"timeout": 30})
        factory = async_sessionmaker(engine, expire_on_commit=False)

        @asynccontextmanager
        async def plain_transaction() -> AsyncIterator[AsyncSession]:
            async with factory() as session, session.begin():
                yield session

        return plain_transaction, engine.dispose
    database = open_database(worker.url, schema=worker.schema)
    return database.write, database.dispose
