"""The idempotent consumer: a handler claims a message id in the same transaction as its effect.

JetStream redelivers messages that were already acknowledged when the broker crashes, and a consumer process can die
between its commit and its ack (reference/reliability.md sections 1 and 2), so "commit then ack" alone runs an
effect twice. `claim` returns False for a message this consumer already processed, and the handler skips it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from services.runtime.clock import Clock, SystemClock
from services.runtime.db import upsert_insert
from services.runtime.messaging_tables import processed_messages_table


async def claim(session: AsyncSession, consumer: str, msg_id: str, *, clock: Clock | None = None) -> bool:
    """Records (consumer, msg_id) in the caller's transaction; True if this is the first time, False if seen."""
    now = (clock or SystemClock()).now()
    statement = (
        upsert_insert(session)(processed_messages_table)
        .values(consumer=consumer, msg_id=msg_id, processed_at=now)
        .on_conflict_do_nothing(index_elements=["consumer", "msg_id"])
        # rowcount is -1 for this statement on psycopg; only the winner gets a row back.
        .returning(processed_messages_table.c.msg_id)
    )
    result = await session.execute(statement)
    return result.first() is not None


async def prune_processed(session: AsyncSession, *, older_than: dt.datetime) -> int:
    """Forgets claims older than the redelivery horizon (longer than any stream keeps a message)."""
    result = await session.execute(
        delete(processed_messages_table).where(processed_messages_table.c.processed_at < older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
