"""The auth service's Alembic migrations build exactly the tables of services.auth.store.metadata, on SQLite and
PostgreSQL: after upgrading, Alembic's autogenerate comparison finds nothing to change."""

from __future__ import annotations

from typing import Any

import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table

from services.auth.app import MIGRATIONS_DIR
from services.auth.store import AUTH_TABLES, metadata
from services.runtime.db import migrate, normalize_url, open_database


def differences(database_target: Any, target: MetaData) -> list[Any]:
    engine = sqlalchemy.create_engine(normalize_url(database_target.url).replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            if database_target.schema:
                conn.execute(sqlalchemy.text(f'SET search_path TO "{database_target.schema}"'))
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return [d for d in compare_metadata(context, target) if not _is_alembic_version(d)]
    finally:
        engine.dispose()


def _is_alembic_version(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version"


async def test_migrations_create_every_table_of_the_metadata_and_nothing_else(database_target: Any) -> None:
    database = open_database(database_target.url, schema=database_target.schema)
    try:
        await migrate(database, MIGRATIONS_DIR)
    finally:
        await database.dispose()

    assert set(AUTH_TABLES) | {"outbox", "processed_messages", "dead_letters"} <= set(metadata.tables)
    assert differences(database_target, metadata) == []


async def test_the_comparison_sees_a_table_the_migrations_lack(database_target: Any) -> None:
    # Negative control: the check above would notice a model the migrations do not create.
    database = open_database(database_target.url, schema=database_target.schema)
    try:
        await migrate(database, MIGRATIONS_DIR)
    finally:
        await database.dispose()
    extended = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(extended)
    Table("not_migrated", extended, Column("id", Integer, primary_key=True))

    found = differences(database_target, extended)
    assert [(d[0], d[1].name) for d in found] == [("add_table", "not_migrated")]
