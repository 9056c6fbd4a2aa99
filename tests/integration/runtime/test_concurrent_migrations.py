"""Replicas that start at the same moment on a fresh database all migrate it, none fails (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import inspect

from services.runtime.db import Database, migrate, open_database
from tests.fixtures.databases import DatabaseTarget

OUTBOUND_MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "outbound" / "migrations"


async def test_four_replicas_migrating_at_once_all_succeed(database_target: DatabaseTarget) -> None:
    replicas = [open_database(database_target.url, schema=database_target.schema) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(replica, OUTBOUND_MIGRATIONS) for replica in replicas))
        tables = await _tables(replicas[0])
    finally:
        for replica in replicas:
            await replica.dispose()
    assert {"send_mailboxes", "send_ledger_entries", "outbox", "alembic_version"} <= tables


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
