"""Outbound's Alembic migrations build exactly the tables of services.outbound.store.metadata (sends, staged
attachments, the send ledger, the runtime's outbox), on SQLite and PostgreSQL: after upgrading, Alembic's
autogenerate comparison finds nothing to change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table

from services.outbound.app import MIGRATIONS_DIR
from services.outbound.store import metadata
from services.runtime.db import migrate, open_database
from tests.integration.auth.test_auth_migrations import differences


async def _migrated(database_target: Any) -> None:
    database = open_database(database_target.url, schema=database_target.schema)
    try:
        await migrate(database, MIGRATIONS_DIR)
    finally:
        await database.dispose()


async def test_outbound_migrations_create_every_table_and_column_of_the_metadata(
    database_target: Any,
) -> None:
    await _migrated(database_target)

    assert {"sends", "staged_attachments", "send_mailboxes", "send_ledger_entries", "outbox"} <= set(
        metadata.tables
    )
    assert differences(database_target, metadata) == []


async def test_the_comparison_sees_a_table_the_migrations_lack(database_target: Any) -> None:
    # Negative control: the check above would notice a table the migrations do not create.
    await _migrated(database_target)
    extended = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(extended)
    Table("not_migrated", extended, Column("id", Integer, primary_key=True))

    found = differences(database_target, extended)
    assert [(d[0], d[1].name) for d in found] == [("add_table", "not_migrated")]
