"""The tables the messaging runtime keeps in every service's own database: outbox, processed_messages, dead_letters.

One definition feeds both a service's MetaData (`add_runtime_tables`, so Alembic sees them) and the service's
first migration (`create_runtime_tables(op)`); the runtime's queries use the tables in `RUNTIME_METADATA`, which
have the same names and columns (services live in their own schema through the search path, so no schema prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY column; PostgreSQL gets a bigint identity.
_ID = BigInteger().with_variant(Integer(), "sqlite")
_WHEN = DateTime(timezone=True)


def _outbox_items() -> list[Any]:
    return [
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("subject", String(255), nullable=False),
        Column("msg_id", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        # The W3C trace context of the transaction that staged the event, so the publish continues its trace.
        Column("trace_headers", JSON, nullable=False),
        Column("created_at", _WHEN, nullable=False),
        Column("published_at", _WHEN, nullable=True),
    ]


def _processed_messages_items() -> list[Any]:
    return [
        Column("consumer", String(200), nullable=False),
        Column("msg_id", String(255), nullable=False),
        Column("processed_at", _WHEN, nullable=False),
        PrimaryKeyConstraint("consumer", "msg_id", name="pk_processed_messages"),
    ]


def _dead_letters_items() -> list[Any]:
    return [
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("consumer", String(200), nullable=False),
        Column("stream", String(200), nullable=False),
        Column("stream_sequence", BigInteger, nullable=False),
        Column("subject", String(255), nullable=False),
        Column("msg_id", String(255), nullable=True),
        Column("headers", JSON, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("error", Text, nullable=False),
        Column("num_delivered", Integer, nullable=False),
        Column("failed_at", _WHEN, nullable=False),
        Column("redriven_at", _WHEN, nullable=True),
        Column("redrive_msg_id", String(255), nullable=True),
        UniqueConstraint("consumer", "stream", "stream_sequence", name="uq_dead_letters_delivery"),
    ]


_TABLES: dict[str, Callable[[], list[Any]]] = {
    "outbox": _outbox_items,
    "processed_messages": _processed_messages_items,
    "dead_letters": _dead_letters_items,
}
# (index name, table, columns)
_INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_outbox_published_at_id", "outbox", ("published_at", "id")),
    ("ix_processed_messages_processed_at", "processed_messages", ("processed_at",)),
)


def add_runtime_tables(metadata: MetaData) -> dict[str, Table]:
    """Adds the runtime tables to a service's MetaData (for Alembic autogenerate and create_all in tests)."""
    tables = {name: Table(name, metadata, *items()) for name, items in _TABLES.items()}
    for index_name, table_name, columns in _INDEXES:
        Index(index_name, *(tables[table_name].c[column] for column in columns))
    return tables


def create_runtime_tables(op: Any) -> None:
    """Creates the runtime tables from an Alembic migration's `upgrade()` (call it in the first migration)."""
    for name, items in _TABLES.items():
        op.create_table(name, *items())
    for index_name, table_name, columns in _INDEXES:
        op.create_index(index_name, table_name, list(columns))


def drop_runtime_tables(op: Any) -> None:
    """Drops the runtime tables from an Alembic migration's `downgrade()`."""
    for index_name, table_name, _columns in reversed(_INDEXES):
        op.drop_index(index_name, table_name=table_name)
    for name in reversed(list(_TABLES)):
        op.drop_table(name)


RUNTIME_METADATA = MetaData()
_runtime = add_runtime_tables(RUNTIME_METADATA)
outbox_table: Table = _runtime["outbox"]
processed_messages_table: Table = _runtime["processed_messages"]
dead_letters_table: Table = _runtime["dead_letters"]
