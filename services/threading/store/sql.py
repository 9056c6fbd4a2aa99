"""The one idempotent write this storage builds on: INSERT ... ON CONFLICT DO NOTHING RETURNING, on either dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.runtime.db import upsert_insert


def _insert(session: AsyncSession, table: Any) -> Any:
    return upsert_insert(session)(table)


async def insert_new(session: AsyncSession, table: Any, values: dict[str, Any]) -> bool:
    """Inserts the row unless its primary or unique key exists; True only for the transaction that inserted it.

    RETURNING is the winner test because psycopg reports rowcount -1 for this statement."""
    first_key = next(iter(table.primary_key.columns))
    statement = _insert(session, table).values(**values).on_conflict_do_nothing().returning(first_key)
    return (await session.execute(statement)).first() is not None


async def insert_many_new(session: AsyncSession, table: Any, rows: list[dict[str, Any]]) -> None:
    """Inserts the rows that do not exist yet (children of a row this transaction just created, or links)."""
    if rows:
        await session.execute(_insert(session, table).values(rows).on_conflict_do_nothing())
