"""The runtime tables' migration helpers on both databases: the migration creates exactly what the MetaData
helper declares, and the downgrade removes it."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import MetaData, inspect

from services.runtime.db import Database
from services.runtime.messaging_tables import add_runtime_tables, drop_runtime_tables

RUNTIME_TABLES = {"outbox", "processed_messages", "dead_letters"}


async def test_migration_creates_what_the_metadata_declares_and_downgrade_drops_it(
    runtime_database: Database,
) -> None:
    service_metadata = MetaData()
    add_runtime_tables(service_metadata)

    def differences(connection: Any) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), service_metadata))

    def drop(connection: Any) -> None:
        drop_runtime_tables(Operations(MigrationContext.configure(connection)))

    def table_names(connection: Any) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with runtime_database.engine.begin() as connection:
        assert RUNTIME_TABLES <= await connection.run_sync(table_names)
        assert await connection.run_sync(differences) == []
        await connection.run_sync(drop)
        assert not RUNTIME_TABLES & await connection.run_sync(table_names)
