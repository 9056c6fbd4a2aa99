"""Database engines, sessions and migrations for every service (SQLAlchemy 2 asyncio + Alembic).

SQLite is the embedded default (one file per service); any SQLAlchemy URL works, PostgreSQL (psycopg) in
production. On PostgreSQL each service lives in its own schema (`search_path`), so services never see each
other's tables even when they share a database.

SQLite note: the sqlite3 driver only emits BEGIN before the first write, so a read-then-write transaction is not
serialised and a count-then-insert limiter over-admits (reference/reliability.md section 3). Write transactions
here therefore start with BEGIN IMMEDIATE; read-only sessions use a deferred BEGIN. The file runs in WAL mode with
synchronous=NORMAL (readers never block the writer; a commit is durable against a process crash). SQLite has one
writer at a time, so a process also queues its own write transactions on an asyncio lock: a waiting writer starts
the moment the previous one commits, instead of polling in SQLite's busy handler, and holds no connection while
it waits.

Connection pools (PostgreSQL, and SQLite's per-thread connections) are sized by the `database_pool_size` and
`database_max_overflow` settings every service shares.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, event, literal_column
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.runtime import sqlite_connection
from services.runtime.db_tracing import instrument_engine

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SQLITE_BEGIN = "mailsync_sqlite_begin"
_SQLITE_BRIEF = "mailsync_sqlite_brief"
# What `constant_in` writes into SQL as it is: letters, digits and underscores only (no quoting to get wrong).
_CONSTANT = re.compile(r"^[A-Za-z0-9_]+$")
_Statement = TypeVar("_Statement")
DEFAULT_POOL_SIZE = 10
DEFAULT_MAX_OVERFLOW = 20


class DatabaseConfigError(ValueError):
    """The database URL or schema in the configuration is unusable."""


class _WriterQueue:
    """One asyncio lock per event loop (a Database may outlive the loop that first used it, as in tests)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock


@dataclass(frozen=True)
class Database:
    """A service's engine with its two kinds of session."""

    engine: AsyncEngine
    schema: str | None
    _writer: async_sessionmaker[AsyncSession]
    _reader: async_sessionmaker[AsyncSession]
    # Brief write transactions (see `write`); the same as _writer except on SQLite.
    _brief_writer: async_sessionmaker[AsyncSession] | None = None
    # Set on SQLite only: the process's write transactions take turns (see the module docstring).
    _writer_queue: _WriterQueue | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def write(self, *, brief: bool = False) -> AsyncIterator[AsyncSession]:
        """A read-write transaction, committed on success and rolled back on error.

        `brief`: a few statements on indexed rows, none of them slow. On SQLite its statements then run on the event
        loop's thread instead of one trip each to the driver's thread, and only a BEGIN that must wait for another
        process's writer goes there (services.runtime.sqlite_connection): the process's other writers, queued for
        the lock, no longer wait for this transaction's trips behind every other ready task of a busy loop.
        """
        if self._writer_queue is None:
            async with self._writer() as session, session.begin():
                yield session
            return
        writer = self._brief_writer if brief and self._brief_writer is not None else self._writer
        # The session is made before and closed after the lock is held: neither touches the database (it takes its
        # connection at the first statement; the commit ended the transaction), so other writers need not wait.
        async with writer() as session:
            async with self._writer_queue.lock(), session.begin():
                yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session: never takes SQLite's write lock; on PostgreSQL it runs without a transaction
        (each statement sees the latest commits, as in READ COMMITTED)."""
        async with self._reader() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raises when the database does not answer (used by health checks)."""
        async with self.read() as session:
            await session.connection()
            from sqlalchemy import text

            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def upsert_insert(session: AsyncSession) -> Any:
    """The dialect's `insert` (with on_conflict_do_nothing/do_update) for the session's database."""
    return dialect_insert(session.get_bind().dialect.name)


def dialect_insert(dialect: str) -> Any:
    """`upsert_insert` for a dialect named as `Database.dialect` names it."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def once_per_dialect(build: Callable[[str], _Statement]) -> Callable[[AsyncSession], _Statement]:
    """A statement built once per database dialect (`build` gets the dialect's name) and then reused.

    A statement built anew on every call with its values as literals costs, each time, the coercion of every value
    to its column and the derivation of its cache key from all of them (a multi-row VALUES is compiled again
    whenever a value changes); built once with bindparam() in place of the values, it is compiled once and only
    its parameters change. For statements whose shape varies (which columns, whether a condition applies), cache
    the builder per shape instead (functools.lru_cache), with the dialect's name among its arguments.
    """
    built: dict[str, _Statement] = {}

    def statement(session: AsyncSession) -> _Statement:
        dialect = session.get_bind().dialect.name
        found = built.get(dialect)
        if found is None:
            found = built[dialect] = build(dialect)
        return found

    return statement


def constant_in(column: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """`column IN ('A', 'B')` with the values written into the SQL, for a fixed list of the code's own constants.

    `in_()` of a list renders an expanding parameter, which SQLAlchemy writes out on every execution even of a
    cached statement; a constant list has no need to."""
    literals = []
    for value in values:
        if not _CONSTANT.match(value):
            raise ValueError(f"not a plain constant for SQL: {value!r}")
        literals.append(literal_column(f"'{value}'", type_=column.type))
    return column.in_(literals)


def normalize_url(url: str) -> str:
    """Picks the asyncio driver for plain URLs (sqlite:// -> aiosqlite, postgresql:// -> psycopg)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseConfigError(f"malformed database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    else:
        raise DatabaseConfigError(
            f"unsupported database {backend!r} in {url!r}: use sqlite:// or postgresql://"
        )
    return parsed.render_as_string(hide_password=False)


def open_database(
    url: str,
    *,
    schema: str | None = None,
    echo: bool = False,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
) -> Database:
    """Creates the engine (no connection is made until first use).

    `pool_size` connections stay open per process and up to `max_overflow` more open under load: a deployment's
    PostgreSQL connection count is replicas x (pool_size + max_overflow) per service.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "echo": echo,
        "pool_pre_ping": True,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
    }
    writer_queue = None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        kwargs["connect_args"] = {"timeout": 30}
        # A file in this process cannot drop a connection as a server can: a ping per checkout (a statement and its
        # trips to the driver's thread, on every transaction) would find nothing.
        kwargs["pool_pre_ping"] = False
        if parsed.database in (None, "", ":memory:"):
            # An in-memory database lives in one connection (a static pool), which takes no pool sizes.
            kwargs.pop("pool_size")
            kwargs.pop("max_overflow")
        else:
            database = parsed.database
            # One trip to the driver's thread per statement, not four (services.runtime.sqlite_connection).
            kwargs["async_creator"] = lambda: sqlite_connection.connect(
                database, check_same_thread=False, timeout=30
            )
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine)
        schema = None
        writer_queue = _WriterQueue()
    else:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise DatabaseConfigError(
                f"invalid schema name {schema!r}: lower-case letters, digits, underscore"
            )
        if schema:
            kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
        engine = create_async_engine(url, **kwargs)
    instrument_engine(
        engine.sync_engine,
        system="sqlite" if writer_queue is not None else "postgresql",
        namespace=schema or Path(parsed.database or "memory").stem,
    )
    writer = async_sessionmaker(engine, expire_on_commit=False)
    brief_writer = None
    if writer_queue is not None:
        brief_writer = async_sessionmaker(
            engine.execution_options(**{_SQLITE_BRIEF: True}), expire_on_commit=False
        )
        reading = engine.execution_options(**{_SQLITE_BEGIN: "DEFERRED"})
    else:
        # READ COMMITTED gives every statement its own snapshot anyway, so a read-only session loses nothing
        # without BEGIN and COMMIT, and saves their two round trips.
        reading = engine.execution_options(isolation_level="AUTOCOMMIT")
    reader = async_sessionmaker(reading, expire_on_commit=False)
    return Database(
        engine=engine,
        schema=schema,
        _writer=writer,
        _reader=reader,
        _brief_writer=brief_writer,
        _writer_queue=writer_queue,
    )


def _create_private_file(path: Path) -> None:
    """Creates the SQLite file readable by its owner only (0600): it holds sealed tokens and mail metadata.

    SQLite gives its -wal and -shm files the database file's permissions, so they are private too.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours (see the module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        mode = options.get(_SQLITE_BEGIN, "IMMEDIATE")
        driver_connection = conn.connection.driver_connection
        if isinstance(driver_connection, sqlite_connection.OneTripConnection):
            # In the first statement's trip to the driver's thread, before it (services.runtime.sqlite_connection).
            driver_connection.begin_with_next_statement(
                f"BEGIN {mode}", brief=mode == "IMMEDIATE" and bool(options.get(_SQLITE_BRIEF))
            )
        else:
            conn.exec_driver_sql(f"BEGIN {mode}")


async def ensure_schema(db: Database) -> None:
    """Creates the service's PostgreSQL schema if missing (no-op on SQLite)."""
    if db.dialect != "postgresql" or not db.schema:
        return
    from sqlalchemy import text

    async with db.engine.begin() as conn:
        # Only when missing: CREATE SCHEMA (even IF NOT EXISTS) needs CREATE on the database, which a schema's
        # owner role rightly lacks when an administrator created the schema for it (docs/operations.md).
        exists = await conn.scalar(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": db.schema}
        )
        if not exists:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))


async def migrate(db: Database, migrations_dir: Path) -> None:
    """Applies the service's Alembic migrations up to head; replicas starting together take turns."""
    async with migration_lock(db):
        await ensure_schema(db)
        from services.runtime.migrations import upgrade_to_head

        async with db.engine.connect() as conn:
            await conn.run_sync(lambda sync_conn: upgrade_to_head(sync_conn, migrations_dir, db.schema))
            await conn.commit()


@asynccontextmanager
async def migration_lock(db: Database) -> AsyncIterator[None]:
    """Serialises migrations of one database across processes.

    Alembic does not run SQLite DDL in one transaction, so two replicas that start at the same moment both see
    an empty database and the second fails with "table already exists". PostgreSQL: a session advisory lock
    keyed by the schema; SQLite: an exclusive file lock beside the database file (SQLite is one host anyway).
    """
    if db.dialect == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(
            hashlib.sha256(f"mailsync-migrate:{db.schema}".encode()).digest()[:8], "big", signed=True
        )
        async with db.engine.connect() as lock_conn:
            await lock_conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            await lock_conn.commit()
            try:
                yield
            finally:
                await lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await lock_conn.commit()
        return
    database = db.engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_fd = await asyncio.to_thread(os.open, f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(lock_fd)


def run_blocking(coro: Any) -> Any:
    """Runs a coroutine from synchronous code (CLI commands)."""
    return asyncio.run(coro)
