"""aiosqlite connections that run a statement in one trip to their thread instead of four.

SQLAlchemy's aiosqlite adapter creates a cursor, executes, fetches all rows and closes the cursor, and stock aiosqlite
makes each of those a round trip to the connection's thread (a queue put, a thread wake-up, a callback on the event
loop and a self-pipe write to wake it). Here execute and fetch share one trip, and creating and closing a cursor
(which touch no database page: a statement is reset once its rows are all fetched) happen where they are asked.

A transaction's BEGIN rides along too: `begin_with_next_statement` keeps it until the transaction's first
statement, which runs it first in the same trip (a transaction with no statement never begins, and its COMMIT or
ROLLBACK needs no trip either; nor does the pool's rollback of a connection it takes back with no transaction
open). The lock BEGIN IMMEDIATE takes is still taken before the transaction's first statement runs.

SQLAlchemy opens SQLite with `check_same_thread=False`, and it never uses one connection for two statements at
once, so the connection's own thread and the event loop never work on it at the same time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Iterable
from typing import Any

import aiosqlite


class OneTripCursor(aiosqlite.Cursor):
    """A cursor whose execute also fetches the rows (in the same trip); fetchall then answers from them."""

    def __init__(self, connection: aiosqlite.Connection, cursor: sqlite3.Cursor) -> None:
        super().__init__(connection, cursor)
        self._fetched: list[Any] | None = None

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> OneTripCursor:
        if self._one_trip_connection.runs_statements_here():
            self._fetched = self._execute_and_fetch(None, sql, [] if parameters is None else parameters)
            return self
        begin = self._one_trip_connection.take_pending_begin()
        self._fetched = await self._execute(
            self._execute_and_fetch, begin, sql, [] if parameters is None else parameters
        )
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> OneTripCursor:
        if self._one_trip_connection.runs_statements_here():
            self._execute_many(None, sql, parameters)
            return self
        begin = self._one_trip_connection.take_pending_begin()
        await self._execute(self._execute_many, begin, sql, parameters)
        return self

    @property
    def _one_trip_connection(self) -> OneTripConnection:
        connection = self._conn
        assert isinstance(connection, OneTripConnection)
        return connection

    def _execute_and_fetch(self, begin: str | None, sql: str, parameters: Any) -> list[Any] | None:
        # Runs on the connection's thread.
        if begin is not None:
            self._cursor.execute(begin)
        self._cursor.execute(sql, parameters)
        return self._cursor.fetchall() if self._cursor.description else None

    def _execute_many(self, begin: str | None, sql: str, parameters: Any) -> None:
        if begin is not None:
            self._cursor.execute(begin)
        self._cursor.executemany(sql, parameters)

    async def fetchall(self) -> Iterable[sqlite3.Row]:
        fetched, self._fetched = self._fetched, None
        if fetched is not None:
            return fetched
        return await super().fetchall()

    async def close(self) -> None:
        self._fetched = None
        self._cursor.close()


class _MadeCursor:
    """A cursor made already, awaitable and usable with `async with` like aiosqlite's (SQLAlchemy enters it)."""

    def __init__(self, cursor: OneTripCursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, OneTripCursor]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> OneTripCursor:
        return self._cursor

    async def __aexit__(self, *_exc: object) -> None:
        await self._cursor.close()


class OneTripConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors are OneTripCursors."""

    _pending_begin: str | None = None
    # Set for a brief write transaction: once its BEGIN IMMEDIATE holds the write lock, its statements run here.
    _brief: bool = False

    def begin_with_next_statement(self, begin: str, *, brief: bool = False) -> None:
        """Runs `begin` (e.g. "BEGIN IMMEDIATE") right before the next statement, in its trip.

        `brief`: a write transaction of a few statements on indexed rows. It runs on the calling thread (the event
        loop's) without a trip to the driver's thread, unless its BEGIN finds another process holding the write
        lock: that BEGIN, which may wait, goes to the driver's thread with the first statement, and only the later
        statements run here. Once the transaction holds the write lock nothing makes its statements wait (in WAL
        mode readers never block a writer). A trip costs little on an idle event loop, but on a busy one it waits
        behind every ready task while the process's other writers queue for the lock (services.runtime.db): 20
        concurrent sends held the lock about 5 ms per trip for 0.3 ms of SQLite work.
        """
        self._pending_begin = begin
        self._brief = brief

    def take_pending_begin(self) -> str | None:
        begin, self._pending_begin = self._pending_begin, None
        return begin

    def runs_statements_here(self) -> bool:
        """True when the next statement runs on the calling thread (a brief transaction holding the write lock)."""
        if not self._brief:
            return False
        if self._pending_begin is not None:
            if not self._begin_unless_busy(self._pending_begin):
                return False
            self._pending_begin = None
        return self._conn.in_transaction

    def _begin_unless_busy(self, begin: str) -> bool:
        """Runs `begin` here if the write lock is free now; False (nothing begun) when another process holds it."""
        connection = self._conn
        waits = connection.execute("PRAGMA busy_timeout").fetchone()[0]
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            connection.execute(begin)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return False
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(waits)}")
        return True

    def _in_brief_transaction(self) -> bool:
        return self._brief and self._pending_begin is None and self._conn.in_transaction

    async def commit(self) -> None:
        if self._in_brief_transaction():
            self._brief = False
            self._conn.commit()
            return
        self._brief = False
        if self._transaction_started():
            await super().commit()

    async def rollback(self) -> None:
        if self._in_brief_transaction():
            self._brief = False
            self._conn.rollback()
            return
        self._brief = False
        # Also what the pool does to every connection it takes back, mostly after a commit: nothing to end then.
        if self._transaction_started():
            await super().rollback()

    def _transaction_started(self) -> bool:
        if self.take_pending_begin() is not None:
            return False
        # Read here, not on the connection's thread: nothing runs on the connection between two of its calls.
        return self._connection is None or self._conn.in_transaction

    def cursor(self) -> _MadeCursor:  # type: ignore[override]
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return _MadeCursor(OneTripCursor(self, self._conn.cursor()))


def connect(database: str, **kwargs: Any) -> OneTripConnection:
    """Like `aiosqlite.connect` (await it, or give it to SQLAlchemy as `async_creator`)."""

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    return OneTripConnection(connector, iter_chunk_size=64)
