"""A mailbox's sync status as the GetSyncStatus RPC reports it, read from ingest's own tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.ingest import store
from services.runtime.db import Database


@dataclass(frozen=True)
class SyncStatusView:
    mailbox_id: str
    mailbox_email: str
    state: str
    history_cursor: int
    last_sync_at: dt.datetime | None
    lag_seconds: float
    last_error: str
    messages_published: int
    messages_skipped: int
    resyncs: int
    last_audit_at: dt.datetime | None
    last_audit_missing: int
    next_attempt_at: dt.datetime | None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def read_sync_status(db: Database, mailbox_id: str, *, now: dt.datetime) -> SyncStatusView | None:
    async with db.read() as session:
        row = await store.get_sync_row(session, mailbox_id)
        if row is None:
            return None
        last_sync = _aware(row.last_sync_at)
        cursor = row.history_cursor or 0
        # Behind when a push named a history id past the cursor: for as long as the last pass is ago.
        behind = row.latest_seen_history_id > cursor
        lag = (now - last_sync).total_seconds() if behind and last_sync is not None else 0.0
        return SyncStatusView(
            mailbox_id=row.mailbox_id,
            mailbox_email=row.mailbox_email,
            state=row.state,
            history_cursor=cursor,
            last_sync_at=last_sync,
            lag_seconds=max(lag, 0.0),
            last_error=row.last_error,
            messages_published=row.messages_published,
            messages_skipped=row.messages_skipped,
            resyncs=row.resyncs,
            last_audit_at=_aware(row.last_audit_at),
            last_audit_missing=row.last_audit_missing,
            next_attempt_at=_aware(row.next_attempt_at),
        )
