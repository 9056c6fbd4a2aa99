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
        begin = self._one_trip_connection.take_pending_begin()
        self._fetched = await self._execute(
            self._execute_and_fetch, begin, sql, [] if parameters is None else parameters
        )
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> OneTripCursor:
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

    def begin_with_next_statement(self, begin: str) -> None:
        """Runs `begin` (e.g. "BEGIN IMMEDIATE") right before the next statement, in its trip."""
        self._pending_begin = begin

    def take_pending_begin(self) -> str | None:
        begin, self._pending_begin = self._pending_begin, None
        return begin

    async def commit(self) -> None:
        if self._transaction_started():
            await super().commit()

    async def rollback(self) -> None:
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
