"""Ingest's own tables and queries: per-mailbox sync state with a fenced lease, the published-message ledger,
BCC addresses and the drop log.

One worker processes a mailbox at a time, also across replicas: a lease row with an expiry and a fencing token
that grows with every acquisition. Every write a worker makes (cursor, ledger) is conditional on its token, so a
worker that overran its lease (paused, partitioned) cannot write after another took over (LeaseLost).
The published ledger keeps ids only (R18: no content), for R15 de-duplication, R17 known messages and the audit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    MetaData,
    String,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.messaging_tables import add_runtime_tables

_WHEN = DateTime(timezone=True)

metadata = MetaData()
add_runtime_tables(metadata)


class Base(DeclarativeBase):
    metadata = metadata


class MailboxSyncRow(Base):
    __tablename__ = "mailbox_sync"

    mailbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    mailbox_email: Mapped[str] = mapped_column(String(320))
    # Gmail history id up to which every change is published; None after a history gap until the resync.
    history_cursor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str] = mapped_column(String(32), default="IDLE")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_seen_history_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_synced_internal_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    messages_published: Mapped[int] = mapped_column(BigInteger, default=0)
    messages_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    resyncs: Mapped[int] = mapped_column(Integer, default=0)
    last_audit_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    last_audit_missing: Mapped[int] = mapped_column(Integer, default=0)


class PublishedMessageRow(Base):
    __tablename__ = "published_messages"

    mailbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gmail_message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rfc_message_id: Mapped[str] = mapped_column(String(998), default="")
    history_id: Mapped[int] = mapped_column(BigInteger)
    internal_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    published_at: Mapped[dt.datetime] = mapped_column(_WHEN)


class BccAddressRow(Base):
    __tablename__ = "bcc_addresses"

    location_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(_WHEN)


class BccDropRow(Base):
    __tablename__ = "bcc_drops"

    drop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    location_id: Mapped[str] = mapped_column(String(128), index=True)
    content_digest: Mapped[str] = mapped_column(String(64))
    rfc_message_id: Mapped[str] = mapped_column(String(998), default="")
    sender: Mapped[str] = mapped_column(String(320), default="")
    accepted: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime] = mapped_column(_WHEN)


class LeaseLost(RuntimeError):
    """This worker's lease on the mailbox was taken over: it must stop writing."""


@dataclass(frozen=True)
class Lease:
    mailbox_id: str
    owner: str
    token: int
    expires_at: dt.datetime


@dataclass(frozen=True)
class PublishedEntry:
    gmail_message_id: str
    rfc_message_id: str
    history_id: int
    internal_ms: int


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def ensure_mailbox(session: AsyncSession, mailbox_id: str, mailbox_email: str) -> None:
    """Creates the mailbox's sync row if missing (idempotent)."""
    statement = (
        _insert(session)(MailboxSyncRow)
        .values(mailbox_id=mailbox_id, mailbox_email=mailbox_email)
        .on_conflict_do_nothing(index_elements=["mailbox_id"])
    )
    await session.execute(statement)


async def acquire_lease(
    session: AsyncSession, mailbox_id: str, owner: str, *, now: dt.datetime, ttl: dt.timedelta
) -> Lease | None:
    """Takes the mailbox's lease when it is free, expired or already ours; None when another worker holds it.

    One conditional UPDATE: PostgreSQL re-checks the condition on the locked row and SQLite serialises writers,
    so two replicas can never both succeed.
    """
    row = MailboxSyncRow.__table__
    expires = now + ttl
    statement = (
        update(row)
        .where(row.c.mailbox_id == mailbox_id)
        .where((row.c.lease_owner.is_(None)) | (row.c.lease_expires_at < now) | (row.c.lease_owner == owner))
        .values(lease_owner=owner, lease_expires_at=expires, fencing_token=row.c.fencing_token + 1)
        .returning(row.c.fencing_token)
    )
    token = (await session.execute(statement)).scalar_one_or_none()
    return None if token is None else Lease(mailbox_id, owner, int(token), expires)


async def renew_lease(session: AsyncSession, lease: Lease, *, now: dt.datetime, ttl: dt.timedelta) -> Lease:
    """Extends a lease this worker still holds (same token); raises LeaseLost otherwise."""
    await _fenced_update(session, lease, lease_expires_at=now + ttl)
    return Lease(lease.mailbox_id, lease.owner, lease.token, now + ttl)


async def release_lease(session: AsyncSession, lease: Lease) -> None:
    """Gives the lease up (no-op when it was already taken over)."""
    row = MailboxSyncRow.__table__
    await session.execute(
        update(row)
        .where(row.c.mailbox_id == lease.mailbox_id, row.c.fencing_token == lease.token)
        .values(lease_owner=None, lease_expires_at=None)
    )


async def _fenced_update(session: AsyncSession, lease: Lease, **values: object) -> None:
    row = MailboxSyncRow.__table__
    statement = (
        update(row)
        .where(row.c.mailbox_id == lease.mailbox_id, row.c.fencing_token == lease.token)
        .where(row.c.lease_owner == lease.owner)
        .values(**values)
        .returning(row.c.mailbox_id)
    )
    if (await session.execute(statement)).first() is None:
        raise LeaseLost(f"lease on mailbox {lease.mailbox_id} (token {lease.token}) was taken over")


async def record_progress(
    session: AsyncSession,
    lease: Lease,
    *,
    published: Sequence[PublishedEntry],
    history_cursor: int | None,
    skipped: int,
    latest_seen_history_id: int,
    now: dt.datetime,
) -> None:
    """Fenced: notes the published messages and moves the cursor, in the caller's transaction.

    Call only after every publish up to `history_cursor` was acknowledged by JetStream.
    """
    newly_published = await _insert_published(session, lease.mailbox_id, published, now)
    row = MailboxSyncRow.__table__
    greatest = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest
    values: dict[str, object] = {
        "history_cursor": history_cursor,
        # Counted from the rows actually inserted, so a replayed pass does not count twice.
        "messages_published": row.c.messages_published + newly_published,
        "messages_skipped": row.c.messages_skipped + skipped,
        "latest_seen_history_id": greatest(row.c.latest_seen_history_id, latest_seen_history_id),
        "last_sync_at": now,
        "last_error": "",
        "consecutive_failures": 0,
    }
    if published:
        newest = max(entry.internal_ms for entry in published)
        values["last_synced_internal_ms"] = greatest(row.c.last_synced_internal_ms, newest)
    # A lost lease raises here and the caller's transaction (the inserts above included) rolls back.
    await _fenced_update(session, lease, **values)


async def _insert_published(
    session: AsyncSession, mailbox_id: str, published: Sequence[PublishedEntry], now: dt.datetime
) -> int:
    if not published:
        return 0
    table = PublishedMessageRow.__table__
    result = await session.execute(
        _insert(session)(table)
        .values(
            [
                {
                    "mailbox_id": mailbox_id,
                    "gmail_message_id": entry.gmail_message_id,
                    "rfc_message_id": entry.rfc_message_id,
                    "history_id": entry.history_id,
                    "internal_ms": entry.internal_ms,
                    "published_at": now,
                }
                for entry in published
            ]
        )
        .on_conflict_do_nothing(index_elements=["mailbox_id", "gmail_message_id"])
        .returning(table.c.gmail_message_id)
    )
    return len(result.all())


async def published_among(session: AsyncSession, mailbox_id: str, gmail_ids: Iterable[str]) -> set[str]:
    """Which of these Gmail ids were already published for the mailbox."""
    ids = list(gmail_ids)
    if not ids:
        return set()
    found: set[str] = set()
    table = PublishedMessageRow.__table__
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        result = await session.execute(
            select(table.c.gmail_message_id).where(
                table.c.mailbox_id == mailbox_id, table.c.gmail_message_id.in_(chunk)
            )
        )
        found.update(result.scalars())
    return found


async def get_sync_row(session: AsyncSession, mailbox_id: str) -> MailboxSyncRow | None:
    return await session.get(MailboxSyncRow, mailbox_id)
