"""The threading migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.threading.store.models import metadata


async def test_migrated_schema_matches_the_models(threading_db: Any) -> None:
    def differences(connection: Any) -> list[Any]:
        return compare_metadata(MigrationContext.configure(connection), metadata)

    async with threading_db.engine.connect() as connection:
        diff = await connection.run_sync(differences)
    # Types are compared loosely by Alembic; what matters is that no table, column or index is missing or extra.
    assert [d for d in diff if d[0] != "modify_type"] == []
