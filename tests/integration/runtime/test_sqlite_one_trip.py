"""The runtime's SQLite connections (one trip to the driver's thread per statement, BEGIN with the first statement)
keep what the services rely on: a write transaction holds the database's write lock from its first statement to its
end, a failed transaction leaves nothing, a read sees what was committed, rows, row counts and RETURNING come back. A brief write transaction does the same
on the event loop's thread once it holds the lock, and waits for another process's writer off that thread."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text

from services.runtime.db import Database, open_database
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS


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


# -- brief write transactions: run on the event loop's thread once they hold the write lock ---------------------


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to a connection's driver thread (one per trip)."""
    sent: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent


async def test_a_brief_write_transaction_makes_no_trip_to_the_driver_thread_when_the_lock_is_free(
    database: Database, trips: list[str]
) -> None:
    async with database.write(brief=True) as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('a'), ('b')"))
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
        await session.execute(text("UPDATE items SET name = 'z' WHERE name = 'a'"))
    brief_trips = list(trips)
    trips.clear()
    # The same transaction not marked brief: a trip per statement and one for its COMMIT.
    async with database.write() as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('c')"))
        await session.execute(text("SELECT name FROM items ORDER BY id"))
        await session.execute(text("UPDATE items SET name = 'y' WHERE name = 'b'"))
    assert names == ["a", "b"]
    assert brief_trips == []
    assert len(trips) == 4
    async with database.read() as session:
        stored = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert stored == ["z", "y", "c"]


async def test_a_brief_write_transaction_holds_the_lock_and_a_failed_one_leaves_nothing(
    database: Database, tmp_path: Path
) -> None:
    path = str(tmp_path / "one-trip.db")
    async with database.write(brief=True) as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('kept')"))
        held = not _other_writer_gets_the_lock(path)
    assert held and _other_writer_gets_the_lock(path)
    with pytest.raises(RuntimeError):
        async with database.write(brief=True) as session:
            await session.execute(text("INSERT INTO items (name) VALUES ('lost')"))
            raise RuntimeError("the caller failed mid-transaction")
    assert _other_writer_gets_the_lock(path)
    async with database.write(brief=True) as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('kept-too')"))
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM items ORDER BY id"))).scalars().all()
    assert names == ["kept", "kept-too"]


async def test_a_brief_write_transaction_waits_for_another_process_writer_off_the_event_loop(
    database: Database, tmp_path: Path, trips: list[str]
) -> None:
    """Another process holding the write lock makes the BEGIN wait on the driver's thread (the event loop goes
    on), and the transaction commits once the lock is free."""
    other = sqlite3.connect(str(tmp_path / "one-trip.db"), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with database.write(brief=True) as session:
            await session.execute(text("INSERT INTO items (name) VALUES ('after the other writer')"))
            await session.execute(text("UPDATE items SET name = name || '!'"))

    writing = asyncio.create_task(write())
    # The loop keeps running while the write waits: these sleeps would never return if the BEGIN blocked it.
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not writing.done()
    other.execute("ROLLBACK")
    other.close()
    await asyncio.wait_for(writing, timeout=HANG_BOUND_FLOOR_SECONDS)
    # One trip: the BEGIN that waited, with the first statement; the second statement and COMMIT ran here.
    assert trips == ["_execute_and_fetch"]
    async with database.read() as session:
        names = (await session.execute(text("SELECT name FROM items"))).scalars().all()
    assert names == ["after the other writer!"]
