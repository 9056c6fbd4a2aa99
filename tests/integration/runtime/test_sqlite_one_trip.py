"""The runtime's SQLite connections (one trip to the driver's thread per statement, BEGIN with the first statement)
keep what the services rely on: a write transaction holds the database's write lock from its first statement to its
end, a failed transaction leaves nothing, a read sees what was committed, rows, row counts and RETURNING come back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from services.runtime.db import Database, open_database


@pytest.fixture
async def database(tmp_path: Path) -> Database:
    db = open_database(f"sqlite:///{tmp_path / 'one-trip.db'}")
    async with db.write() as session:
        await session.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
    yield db  # type: ignore[misc]
    await db.dispose()


def _other_writer_gets_the_lock(path: str) -> bool:
    other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def test_a_write_transaction_holds_the_write_lock_from_its_first_statement_until_it_ends(
    database: Database, tmp_path: Path
) -> None:
    path = str(tmp_path / "one-trip.db")
    async with database.write() as session:
        await session.execute(text("SELECT count(*) FROM items"))
        held = not _other_writer_gets_the_lock(path)
        await session.execute(text("INSERT INTO items (name) VALUES ('a')"))
        still_held = not _other_writer_gets_the_lock(path)
    assert held and still_held
    assert _other_writer_gets_the_lock(path)


async def test_rows_row_counts_and_returning_come_back(database: Database) -> None:
    async with database.write() as session:
        inserted = (
            await session.execute(
                text("INSERT INTO items (name) VALUES ('a'), ('b'), ('c') RETURNING id, name")
            )
        ).all()
        updated = await session.execute(text("UPDATE items SET name = 'z' WHERE name IN ('a', 'b')"))
        assert updated.rowcount == 2  # type: ignore[attr-defined]
    assert [tuple(row) for row in inserted] == [(1, "a"), (2, "b"), (3, "c")]
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert names == ["z", "z", "c"]


async def test_a_failed_write_transaction_leaves_nothing_and_the_connection_works_again(
    database: Database, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError):
        async with database.write() as session:
            await session.execute(text("INSERT INTO items (name) VALUES ('lost')"))
            raise RuntimeError("the caller failed mid-transaction")
    assert _other_writer_gets_the_lock(str(tmp_path / "one-trip.db"))
    for name in ("kept-1", "kept-2"):
        async with database.write() as session:
            await session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert names == ["kept-1", "kept-2"]


async def test_a_transaction_without_statements_neither_locks_nor_fails(
    database: Database, tmp_path: Path
) -> None:
    async with database.write() as session:
        await session.connection()
        assert _other_writer_gets_the_lock(str(tmp_path / "one-trip.db"))
    async with database.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM items"))).scalar_one() == 0
