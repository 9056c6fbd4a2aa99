"""A transaction-scoped lock per Gmail copy of a sent email, so a send's `sent` record and its Sent copy are
decided one after the other on PostgreSQL.

The race it closes: `sent` (R6, which merges a Sent copy it finds into the send's message) and the Sent copy itself
(which R6 recognises by the Gmail id only once `sent` is stored, and R5 places otherwise) handled at the same moment
by two consumers. Each read its view before the other committed, so `sent` found no copy to merge and the copy found
no sent record: both committed, one send became two CRM messages (an R5 record beside the R6 one), and no claim
caught it since the two write different rows. Taking the same lock on (location, mailbox, Gmail id) before the view
is read makes the second wait for the first's commit and read it (READ COMMITTED). SQLite has one writer already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.threading.domain.model import Direction, Source
from services.threading.store.operations import Operation, PlaceMessage, RecordSent
from services.threading.store.values import considered_locations

# Sorted before they are taken, so two batches never wait on each other's locks in opposite orders.
_LOCK_ALL = text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS sorted_keys"
)


def copy_lock_key(location_id: str, mailbox_id: str, gmail_message_id: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of one Gmail copy as seen from one location."""
    name = f"mailsync-threading-copy\0{location_id}\0{mailbox_id}\0{gmail_message_id}"
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def copy_lock_keys(operations: Iterable[Operation]) -> list[int]:
    """The locks a batch takes: one per sent record with its Gmail id, one per location of an outgoing copy."""
    keys: set[int] = set()
    for operation in operations:
        if isinstance(operation, RecordSent) and operation.gmail_message_id:
            send = operation.send
            keys.add(copy_lock_key(send.location_id, send.mailbox_id, operation.gmail_message_id))
        elif isinstance(operation, PlaceMessage):
            message = operation.message
            # Only a mailbox's own outgoing copy can be a CRM send's Sent copy; inbound mail takes no lock.
            if message.source is not Source.GMAIL_SYNC or message.direction is not Direction.OUTBOUND:
                continue
            for location in considered_locations(message):
                keys.add(copy_lock_key(location, message.mailbox_id, message.gmail_message_id))
    return sorted(keys)


async def lock_copies(conn: AsyncConnection, operations: Sequence[Operation]) -> None:
    """Takes the batch's copy locks until its transaction ends (PostgreSQL; SQLite serialises writers itself)."""
    if conn.dialect.name != "postgresql":
        return
    keys = copy_lock_keys(operations)
    if keys:
        await conn.execute(_LOCK_ALL, {"keys": keys})
