"""Ingest's own tables and queries: per-mailbox sync state with a fenced lease, the published-message ledger,
BCC addresses and the drop log.

One worker processes a mailbox at a time, also across replicas: a lease row with an expiry and a fencing token
that grows with every acquisition. Every write a worker makes (cursor, ledger) is conditional on its token, so a
worker that overran its lease (paused, partitioned) cannot write after another took over (LeaseLost).
The published ledger keeps ids only (R18: no content), for R15 de-duplication, R17 known messages and the audit.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeAlias

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    case,
    delete,
    func,
    not_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.db import constant_in, dialect_insert, once_per_dialect, upsert_insert
from services.runtime.messaging_tables import add_runtime_tables

_WHEN = DateTime(timezone=True)

metadata = MetaData()
add_runtime_tables(metadata)


class Base(DeclarativeBase):
    metadata = metadata


class MailboxSyncRow(Base):
    __tablename__ = "mailbox_sync"

    mailbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Indexed: a push names the mailbox by its address.
    mailbox_email: Mapped[str] = mapped_column(String(320), index=True)
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
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True, index=True)
    messages_published: Mapped[int] = mapped_column(BigInteger, default=0)
    messages_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    resyncs: Mapped[int] = mapped_column(Integer, default=0)
    last_audit_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    last_audit_missing: Mapped[int] = mapped_column(Integer, default=0)
    # Why the scheduler queues the mailbox when next_attempt_at comes (RECHECK, POLL or RETRY).
    next_attempt_reason: Mapped[str] = mapped_column(String(16), default="POLL")
    # The W3C traceparent of the pass that set next_attempt_at ("" when none): the queued pass links to it
    # (runtime.trace_links). Kept in this row, which the pass writes anyway, so it costs no extra statement.
    next_attempt_traceparent: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # Raw (base64url) characters of the largest message the last pass fetched (0: none): the next pass sizes its
    # first messages.get batch by it.
    recent_message_chars: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Bumped by every connection event that sets the state: a pass that decided to stop the mailbox on what auth
    # said stops it only if no event changed the row since it read it (`stop_unless_changed`).
    state_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the mailbox's last push came: Gmail drops the notification of a change made within a second of the one
    # it sent, so the re-checks go on until that second is over (sync_policy.SyncTiming.gmail_push_interval).
    last_push_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)


class PublishedMessageRow(Base):
    __tablename__ = "published_messages"

    mailbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gmail_message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rfc_message_id: Mapped[str] = mapped_column(String(998), default="")
    history_id: Mapped[int] = mapped_column(BigInteger)
    internal_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    published_at: Mapped[dt.datetime] = mapped_column(_WHEN)


# The tables as Core sees them: the statements of a pass are Core statements built once (see `_NEW`).
_SYNC: Table = MailboxSyncRow.__table__  # type: ignore[assignment]
_LEDGER: Table = PublishedMessageRow.__table__  # type: ignore[assignment]

# A mailbox's sync row as read: its columns as attributes (a Core row, not an ORM object: reading it costs no
# identity map or instance state).
SyncRow: TypeAlias = Row[Any]


class BccAddressRow(Base):
    __tablename__ = "bcc_addresses"

    location_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Kept so GetBccAddress can show the address again; drops are looked up by the digest only.
    token: Mapped[str] = mapped_column(String(128), unique=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
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


class BccDropContentRow(Base):
    """The raw message of an accepted drop, kept only until `expires_at` so threading can fetch attachments."""

    __tablename__ = "bcc_drop_contents"

    drop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime] = mapped_column(_WHEN, index=True)


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


def _insert(session: AsyncSession) -> Any:
    return upsert_insert(session)


# Every statement a pass, the scheduler or a push runs is built once (per dialect, or per shape where its columns
# vary) with bindparam() in place of its values, as outbound's are (services.runtime.db.once_per_dialect): built
# anew with literal values, each call coerced every value and derived the statement's cache key from all of them,
# and the ledger's multi-row INSERT was compiled again for every pass. Parameters of new values are named `new_`
# and the column, those of conditions the column and `_is`, so that no name collides with a column's.
_NEW = "new_"


def _new_value(name: str) -> Any:
    return bindparam(f"{_NEW}{name}", type_=_SYNC.c[name].type)


def _greatest(dialect: str) -> Any:
    return func.max if dialect == "sqlite" else func.greatest


@once_per_dialect
def _ensure_mailbox_statement(dialect: str) -> Any:
    # The values come with the parameters (mailbox_id, mailbox_email), as in outbound's insert of a send.
    return dialect_insert(dialect)(_SYNC).on_conflict_do_nothing(index_elements=["mailbox_id"])


async def ensure_mailbox(session: AsyncSession, mailbox_id: str, mailbox_email: str) -> None:
    """Creates the mailbox's sync row if missing (idempotent)."""
    await session.execute(
        _ensure_mailbox_statement(session), {"mailbox_id": mailbox_id, "mailbox_email": mailbox_email}
    )


async def acquire_lease(
    session: AsyncSession, mailbox_id: str, owner: str, *, now: dt.datetime, ttl: dt.timedelta
) -> Lease | None:
    """Takes the mailbox's lease when it is free, expired or already ours; None when another worker holds it.

    One conditional UPDATE: PostgreSQL re-checks the condition on the locked row and SQLite serialises writers,
    so two replicas can never both succeed.
    """
    return await _take_lease(session, mailbox_id, owner, now=now, ttl=ttl)


@dataclass(frozen=True)
class StartedPass:
    """A pass's lease and its mailbox's row as the lease left it (cursor, counters, the first batch's size hint)."""

    lease: Lease
    row: SyncRow


class Readiness(StrEnum):
    """What else the row must say for `start_pass` to take the lease, besides the lease being free."""

    # Nothing: the caller read the row and decided.
    LEASE_FREE = "LEASE_FREE"
    # Scheduled (neither stopped nor paused) and synced before (a cursor): the pass needs nothing asked first.
    SCHEDULED = "SCHEDULED"
    # As SCHEDULED, for a push: not synced within the push interval, and not waiting out a backoff.
    SCHEDULED_FOR_PUSH = "SCHEDULED_FOR_PUSH"


async def start_pass(
    session: AsyncSession,
    mailbox_id: str,
    owner: str,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
    state: str,
    safety_check_at: dt.datetime,
    caused_by: str,
    readiness: Readiness = Readiness.LEASE_FREE,
    push_interval: dt.timedelta = dt.timedelta(0),
) -> StartedPass | None:
    """Takes the lease (as `acquire_lease`) and marks the pass running in the same statement: if this worker
    dies, the scheduler queues the mailbox at `safety_check_at`. `caused_by` (every next check a pass sets): the
    pass's traceparent, which the queued pass links to. None when another worker holds the lease, or the row is
    not as `readiness` asks (then nothing changed).

    The row comes back from the same statement, so a pass that needs nothing decided first (`Readiness.SCHEDULED`)
    reads nothing before it. The size hint for the first batch is cleared when the previous holder never gave the
    lease up (it died, killed for memory while fetching, say), so the next pass starts with the cautious first
    batch instead of the same one again; a pass that ends otherwise without finishing clears it as it releases
    the lease (`release_lease`), and only a finished pass sets it again."""
    expires = now + ttl
    parameters: dict[str, object] = {
        f"{_NEW}lease_owner": owner,
        f"{_NEW}lease_expires_at": expires,
        f"{_NEW}state": state,
        f"{_NEW}next_attempt_at": safety_check_at,
        f"{_NEW}next_attempt_reason": "POLL",
        f"{_NEW}next_attempt_traceparent": caused_by,
        "mailbox_id_is": mailbox_id,
        "owner_is": owner,
        "now": now,
    }
    if readiness is Readiness.SCHEDULED_FOR_PUSH:
        parameters["synced_before"] = now - push_interval
    row = (await session.execute(_start_pass_statement(readiness), parameters)).first()
    if row is None:
        return None
    return StartedPass(Lease(mailbox_id, owner, int(row.fencing_token), expires), row)


_PASS_START_COLUMNS = (
    "lease_owner",
    "lease_expires_at",
    "state",
    "next_attempt_at",
    "next_attempt_reason",
    "next_attempt_traceparent",
)


@functools.lru_cache(maxsize=4)
def _start_pass_statement(readiness: Readiness) -> Any:
    row = _SYNC
    conditions = [row.c.mailbox_id == bindparam("mailbox_id_is"), _lease_free()]
    if readiness is not Readiness.LEASE_FREE:
        conditions += [not_(constant_in(row.c.state, UNSCHEDULED_STATES)), row.c.history_cursor.is_not(None)]
    if readiness is Readiness.SCHEDULED_FOR_PUSH:
        conditions += [
            row.c.last_sync_at.is_(None)
            | (row.c.last_sync_at <= bindparam("synced_before", type_=row.c.last_sync_at.type)),
            not_(constant_in(row.c.state, RETRY_WAIT_STATES))
            | row.c.next_attempt_at.is_(None)
            | (row.c.next_attempt_at <= bindparam("now", type_=row.c.next_attempt_at.type)),
        ]
    return (
        update(row)
        .where(*conditions)
        .values(
            fencing_token=row.c.fencing_token + 1,
            # Cleared when the previous holder never gave the lease up (see start_pass).
            recent_message_chars=case((row.c.lease_owner.is_(None), row.c.recent_message_chars), else_=0),
            **{name: _new_value(name) for name in _PASS_START_COLUMNS},
        )
        .returning(*row.c)
    )


def _lease_free() -> Any:
    """The lease is free, expired, or already the owner's (`owner_is`)."""
    row = _SYNC
    return (
        row.c.lease_owner.is_(None)
        | (row.c.lease_expires_at < bindparam("now", type_=row.c.lease_expires_at.type))
        | (row.c.lease_owner == bindparam("owner_is"))
    )


def lease_is_free(row: SyncRow, now: dt.datetime) -> bool:
    """What `_lease_free()` asks of a row in SQL, for a row already read: no holder, or an expired lease."""
    return row.lease_owner is None or (
        row.lease_expires_at is not None and _aware(row.lease_expires_at) < now
    )


async def _take_lease(
    session: AsyncSession,
    mailbox_id: str,
    owner: str,
    *,
    now: dt.datetime,
    ttl: dt.timedelta,
) -> Lease | None:
    expires = now + ttl
    parameters = {
        f"{_NEW}lease_owner": owner,
        f"{_NEW}lease_expires_at": expires,
        "mailbox_id_is": mailbox_id,
        "owner_is": owner,
        "now": now,
    }
    token = (await session.execute(_TAKE_LEASE, parameters)).scalar_one_or_none()
    return None if token is None else Lease(mailbox_id, owner, int(token), expires)


_TAKE_LEASE = (
    update(_SYNC)
    .where(_SYNC.c.mailbox_id == bindparam("mailbox_id_is"), _lease_free())
    .values(
        fencing_token=_SYNC.c.fencing_token + 1,
        lease_owner=_new_value("lease_owner"),
        lease_expires_at=_new_value("lease_expires_at"),
    )
    .returning(_SYNC.c.fencing_token)
)


async def renew_lease(session: AsyncSession, lease: Lease, *, now: dt.datetime, ttl: dt.timedelta) -> Lease:
    """Extends a lease this worker still holds (same token); raises LeaseLost otherwise."""
    await _fenced_update(session, lease, lease_expires_at=now + ttl)
    return Lease(lease.mailbox_id, lease.owner, lease.token, now + ttl)


_RELEASE_LEASE = (
    update(_SYNC)
    .where(_SYNC.c.mailbox_id == bindparam("mailbox_id_is"), _SYNC.c.fencing_token == bindparam("token_is"))
    .values(lease_owner=None, lease_expires_at=None, recent_message_chars=0)
)


async def release_lease(session: AsyncSession, lease: Lease) -> None:
    """Gives the lease up (no-op when it was already taken over). The pass did not finish: the first batch's size
    hint is cleared, as `start_pass` clears it after a holder that died."""
    await session.execute(_RELEASE_LEASE, {"mailbox_id_is": lease.mailbox_id, "token_is": lease.token})


class _Added(NamedTuple):
    """A fenced update's value for a counter: the column grows by `amount`."""

    amount: int


class _AtLeast(NamedTuple):
    """A fenced update's value for a high-water mark: the column becomes `value` if that is greater."""

    value: int


class _IdleUnlessMoved(NamedTuple):
    """The state's value at the end of a good pass: IDLE, unless a connection event moved the mailbox meanwhile
    (stopped or paused) out of the pass's own states."""


_CHANGES = (_Added, _AtLeast, _IdleUnlessMoved)


async def _fenced_update(session: AsyncSession, lease: Lease, **values: object) -> None:
    """The fenced UPDATE of the lease's mailbox: `values` are plain values, or `_Added`, `_AtLeast` and
    `_IdleUnlessMoved` for the columns that change relative to themselves."""
    shape: list[tuple[str, type | None]] = []
    parameters: dict[str, object] = {
        "mailbox_id_is": lease.mailbox_id,
        "token_is": lease.token,
        "lease_owner_is": lease.owner,
    }
    for name, value in values.items():
        shape.append((name, type(value) if isinstance(value, _CHANGES) else None))
        if isinstance(value, _Added):
            parameters[f"{_NEW}{name}"] = value.amount
        elif isinstance(value, _AtLeast):
            parameters[f"{_NEW}{name}"] = value.value
        elif not isinstance(value, _IdleUnlessMoved):
            parameters[f"{_NEW}{name}"] = value
    statement = _fenced_update_statement(session.get_bind().dialect.name, tuple(shape))
    if (await session.execute(statement, parameters)).first() is None:
        raise LeaseLost(f"lease on mailbox {lease.mailbox_id} (token {lease.token}) was taken over")


@functools.lru_cache(maxsize=64)
def _fenced_update_statement(dialect: str, shape: tuple[tuple[str, type | None], ...]) -> Any:
    """The fenced UPDATE of these columns, each (name, how it changes: None to a plain value, or one of the change
    classes above), built once per shape."""
    row = _SYNC
    values: dict[str, Any] = {}
    for name, how in shape:
        column = row.c[name]
        if how is _Added:
            values[name] = column + _new_value(name)
        elif how is _AtLeast:
            values[name] = _greatest(dialect)(column, _new_value(name))
        elif how is _IdleUnlessMoved:
            values[name] = case((constant_in(column, ACTIVE_PASS_STATES), "IDLE"), else_=column)
        else:
            values[name] = _new_value(name)
    return (
        update(row)
        .where(row.c.mailbox_id == bindparam("mailbox_id_is"), row.c.fencing_token == bindparam("token_is"))
        .where(row.c.lease_owner == bindparam("lease_owner_is"))
        .values(values)
        .returning(row.c.mailbox_id)
    )


async def record_progress(
    session: AsyncSession,
    lease: Lease,
    *,
    published: Sequence[PublishedEntry],
    history_cursor: int | None,
    skipped: int,
    latest_seen_history_id: int,
    now: dt.datetime,
    lease_until: dt.datetime | None = None,
) -> None:
    """Fenced: notes the published messages and moves the cursor, in the caller's transaction; `lease_until`
    also extends the lease (a worker renews as it records progress).

    Call only after every publish up to `history_cursor` was acknowledged by JetStream.
    """
    values = await _progress(
        session,
        lease,
        published=published,
        history_cursor=history_cursor,
        skipped=skipped,
        latest_seen_history_id=latest_seen_history_id,
        now=now,
    )
    if lease_until is not None:
        values["lease_expires_at"] = lease_until
    # A lost lease raises here and the caller's transaction (the inserts above included) rolls back.
    await _fenced_update(session, lease, **values)


async def _progress(
    session: AsyncSession,
    lease: Lease,
    *,
    published: Sequence[PublishedEntry],
    history_cursor: int | None,
    skipped: int,
    latest_seen_history_id: int,
    now: dt.datetime,
) -> dict[str, object]:
    """Inserts the ledger entries; returns the row's values that record them and the cursor."""
    newly_published = await _insert_published(session, lease.mailbox_id, published, now)
    values: dict[str, object] = {
        "history_cursor": history_cursor,
        # Counted from the rows actually inserted, so a replayed pass does not count twice.
        "messages_published": _Added(newly_published),
        "messages_skipped": _Added(skipped),
        "latest_seen_history_id": _AtLeast(latest_seen_history_id),
        "last_sync_at": now,
        "last_error": "",
        "consecutive_failures": 0,
    }
    if published:
        values["last_synced_internal_ms"] = _AtLeast(max(entry.internal_ms for entry in published))
    return values


async def _insert_published(
    session: AsyncSession, mailbox_id: str, published: Sequence[PublishedEntry], now: dt.datetime
) -> int:
    if not published:
        return 0
    # One row's INSERT executed with every row's parameters: the dialect's insertmanyvalues sends them as one
    # multi-row statement (up to 1,000 rows; a window holds fewer), compiled once whatever the row count.
    # RETURNING answers for the rows actually inserted, not those ON CONFLICT skipped.
    result = await session.execute(
        _insert_published_statement(session),
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
        ],
    )
    return len(result.all())


@once_per_dialect
def _insert_published_statement(dialect: str) -> Any:
    return (
        dialect_insert(dialect)(_LEDGER)
        .on_conflict_do_nothing(index_elements=["mailbox_id", "gmail_message_id"])
        .returning(_LEDGER.c.gmail_message_id)
    )


_PUBLISHED_AMONG = select(_LEDGER.c.gmail_message_id).where(
    _LEDGER.c.mailbox_id == bindparam("mailbox_id_is"),
    _LEDGER.c.gmail_message_id.in_(bindparam("gmail_message_ids", expanding=True)),
)


async def published_among(session: AsyncSession, mailbox_id: str, gmail_ids: Iterable[str]) -> set[str]:
    """Which of these Gmail ids were already published for the mailbox."""
    ids = list(gmail_ids)
    if not ids:
        return set()
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        result = await session.execute(
            _PUBLISHED_AMONG, {"mailbox_id_is": mailbox_id, "gmail_message_ids": ids[start : start + 500]}
        )
        found.update(result.scalars())
    return found


_SYNC_ROW = select(_SYNC).where(_SYNC.c.mailbox_id == bindparam("mailbox_id_is"))


async def get_sync_row(session: AsyncSession, mailbox_id: str) -> SyncRow | None:
    return (await session.execute(_SYNC_ROW, {"mailbox_id_is": mailbox_id})).first()


# Sync pass bookkeeping ------------------------------------------------------------------------------------------

ACTIVE_PASS_STATES = ("SYNCING", "RESYNCING")
UNSCHEDULED_STATES = ("PAUSED_REAUTH", "STOPPED")
# A push does not start a pass of a mailbox in these states before its retry is due.
RETRY_WAIT_STATES = ("BACKING_OFF", "FAILED")


async def finish_pass(
    session: AsyncSession,
    lease: Lease,
    *,
    published: Sequence[PublishedEntry],
    history_cursor: int | None,
    skipped: int,
    latest_seen_history_id: int,
    now: dt.datetime,
    next_check_at: dt.datetime,
    next_check_reason: str,
    caused_by: str,
    recent_message_chars: int | None = None,
) -> None:
    """Fenced, one UPDATE (after the ledger's INSERT of the last window, if any): the pass ended well. Its last
    messages and the cursor (every publish up to it acknowledged), the next check, the lease given up, and the
    mailbox back to IDLE unless a connection event moved it meanwhile (stopped or paused); `recent_message_chars`
    (the largest message the pass fetched, or the hint it started with when it fetched none; taking the lease
    cleared it) sizes the next pass's first batch."""
    values = await _progress(
        session,
        lease,
        published=published,
        history_cursor=history_cursor,
        skipped=skipped,
        latest_seen_history_id=latest_seen_history_id,
        now=now,
    )
    if recent_message_chars is not None:
        values["recent_message_chars"] = recent_message_chars
    await _fenced_update(
        session,
        lease,
        **values,
        next_attempt_at=next_check_at,
        next_attempt_reason=next_check_reason,
        next_attempt_traceparent=caused_by,
        state=_IdleUnlessMoved(),
        lease_owner=None,
        lease_expires_at=None,
    )


async def record_failure(
    session: AsyncSession,
    lease: Lease,
    *,
    state: str,
    error: str,
    failures: int,
    retry_at: dt.datetime | None,
    now: dt.datetime,
    caused_by: str,
) -> None:
    """Fenced: the pass failed (`failures` in a row); the mailbox waits until `retry_at` (None: until an event)."""
    await _fenced_update(
        session,
        lease,
        state=state,
        last_error=error[:2000],
        consecutive_failures=failures,
        next_attempt_at=retry_at,
        next_attempt_reason="RETRY",
        next_attempt_traceparent=caused_by,
        last_sync_at=now,
    )


async def clear_cursor(session: AsyncSession, lease: Lease) -> None:
    """Fenced: Gmail no longer has history from the cursor; the mailbox resyncs (counted, not failed)."""
    await _fenced_update(session, lease, history_cursor=None, state="RESYNCING", resyncs=_Added(1))


async def record_audit(session: AsyncSession, lease: Lease, *, now: dt.datetime, missing: int) -> None:
    """Fenced: the audit ran and found `missing` messages of Gmail that were never published (and repaired them)."""
    await _fenced_update(session, lease, last_audit_at=now, last_audit_missing=missing)


async def set_state(
    session: AsyncSession,
    mailbox_id: str,
    state: str,
    *,
    next_attempt_at: dt.datetime | None = None,
    reset_failures: bool = False,
) -> None:
    """Unfenced: a connection event decides the mailbox's state (pause, stop, resume), and says so in the row's
    `state_version`, which fences a pass's own stop decided on an older answer."""
    # The event queues its own pass: the next check is no longer caused by the pass that had set it.
    values: dict[str, object] = {
        "state": state,
        "next_attempt_at": next_attempt_at,
        "next_attempt_traceparent": "",
        "state_version": _SYNC.c.state_version + 1,
    }
    if reset_failures:
        values.update(consecutive_failures=0, last_error="")
    await session.execute(update(_SYNC).where(_SYNC.c.mailbox_id == mailbox_id).values(**values))


async def stop_unless_changed(
    session: AsyncSession, mailbox_id: str, state: str, *, seen_version: int
) -> bool:
    """A pass stops (or pauses) the mailbox because auth listed no CONNECTED connection: only when no connection
    event set the state since the pass read the row at `seen_version` (an answer from before a reconnect must not
    stop the mailbox the reconnect resumed). False when an event came first: its own pass takes over."""
    result = await session.execute(
        update(_SYNC)
        .where(_SYNC.c.mailbox_id == mailbox_id, _SYNC.c.state_version == seen_version)
        .values(state=state, next_attempt_at=None, next_attempt_traceparent="")
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def note_push(
    session: AsyncSession, mailbox_email: str, history_id: int, *, now: dt.datetime
) -> str | None:
    """A push named `history_id` for this Gmail address, come at `now`: remembered for the lag in the sync status
    and for the re-checks, on the mailbox ingest knows by that address; its id, or None when ingest has no row for
    the address."""
    result = await session.execute(
        _note_push_statement(session),
        {
            "mailbox_email_is": mailbox_email,
            f"{_NEW}latest_seen_history_id": history_id,
            f"{_NEW}last_push_at": now,
        },
    )
    found = result.scalars().all()
    return found[0] if len(found) == 1 else None


@once_per_dialect
def _note_push_statement(dialect: str) -> Any:
    return _seen_history(dialect, _SYNC.c.mailbox_email).returning(_SYNC.c.mailbox_id)


async def note_seen_history(
    session: AsyncSession, mailbox_id: str, history_id: int, *, now: dt.datetime
) -> None:
    """A push named `history_id`, come at `now`: remembered for the lag in the sync status and the re-checks."""
    await session.execute(
        _note_seen_history_statement(session),
        {
            "mailbox_id_is": mailbox_id,
            f"{_NEW}latest_seen_history_id": history_id,
            f"{_NEW}last_push_at": now,
        },
    )


@once_per_dialect
def _note_seen_history_statement(dialect: str) -> Any:
    return _seen_history(dialect, _SYNC.c.mailbox_id)


def _seen_history(dialect: str, key: Any) -> Any:
    """Raises the latest history id a push named and sets when it came, on the row(s) whose `key` column is the
    parameter key_is."""
    column = _SYNC.c.latest_seen_history_id
    return (
        update(_SYNC)
        .where(key == bindparam(f"{key.name}_is"))
        .values(
            latest_seen_history_id=_greatest(dialect)(column, _new_value(column.name)),
            last_push_at=_new_value("last_push_at"),
        )
    )


@dataclass(frozen=True)
class DueCheck:
    mailbox_id: str
    mailbox_email: str
    due_at: dt.datetime
    reason: str
    # The traceparent of the pass that scheduled the check ("" when none).
    caused_by: str = ""


async def due_checks(session: AsyncSession, *, now: dt.datetime, limit: int) -> list[DueCheck]:
    """Mailboxes whose next check (re-check, safety poll, retry after backoff) is due, oldest first."""
    result = await session.execute(_DUE_CHECKS, {"now": now, "limit": limit})
    return [DueCheck(r[0], r[1], _aware(r[2]), r[3], r[4]) for r in result.all()]


_DUE_CHECKS = (
    select(
        _SYNC.c.mailbox_id,
        _SYNC.c.mailbox_email,
        _SYNC.c.next_attempt_at,
        _SYNC.c.next_attempt_reason,
        _SYNC.c.next_attempt_traceparent,
    )
    .where(
        _SYNC.c.next_attempt_at.is_not(None),
        _SYNC.c.next_attempt_at <= bindparam("now", type_=_SYNC.c.next_attempt_at.type),
    )
    .where(not_(constant_in(_SYNC.c.state, UNSCHEDULED_STATES)))
    .order_by(_SYNC.c.next_attempt_at)
    .limit(bindparam("limit"))
)


async def postpone_checks(
    session: AsyncSession, checks: Sequence[DueCheck], *, now: dt.datetime, until: dt.datetime
) -> list[DueCheck]:
    """Moves these due checks to `until`, in one UPDATE, unless another scheduler did; returns the ones moved here
    (this caller queues their work items)."""
    if not checks:
        return []
    result = await session.execute(
        _POSTPONE_CHECKS,
        {"mailbox_ids": [check.mailbox_id for check in checks], "now": now, f"{_NEW}next_attempt_at": until},
    )
    moved = set(result.scalars())
    return [check for check in checks if check.mailbox_id in moved]


_POSTPONE_CHECKS = (
    update(_SYNC)
    .where(
        _SYNC.c.mailbox_id.in_(bindparam("mailbox_ids", expanding=True)),
        _SYNC.c.next_attempt_at <= bindparam("now", type_=_SYNC.c.next_attempt_at.type),
    )
    # The safety poll behind the queued pass is caused by nothing but the schedule, and is a poll: a re-check that
    # finds nothing writes nothing (sync._look_before_leasing), so this is what the row says after it.
    .values(
        next_attempt_at=_new_value("next_attempt_at"),
        next_attempt_reason="POLL",
        next_attempt_traceparent="",
    )
    .returning(_SYNC.c.mailbox_id)
)


async def published_ids(session: AsyncSession, mailbox_id: str) -> set[str]:
    """Every Gmail id published for the mailbox (ids only)."""
    table = PublishedMessageRow.__table__
    result = await session.execute(select(table.c.gmail_message_id).where(table.c.mailbox_id == mailbox_id))
    return set(result.scalars())


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# BCC addresses and drops ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BccAddress:
    location_id: str
    token: str
    token_digest: str
    created_at: dt.datetime


def _bcc_address(row: BccAddressRow) -> BccAddress:
    return BccAddress(row.location_id, row.token, row.token_digest, _aware(row.created_at))


async def get_bcc_address(session: AsyncSession, location_id: str) -> BccAddress | None:
    row = await session.get(BccAddressRow, location_id, populate_existing=True)
    return None if row is None else _bcc_address(row)


async def create_bcc_address(
    session: AsyncSession, location_id: str, token: str, digest: str, *, now: dt.datetime
) -> BccAddress:
    """The location's address: this token unless another caller created one first (idempotent)."""
    await session.execute(
        _insert(session)(BccAddressRow)
        .values(location_id=location_id, token=token, token_digest=digest, created_at=now)
        .on_conflict_do_nothing(index_elements=["location_id"])
    )
    created = await get_bcc_address(session, location_id)
    assert created is not None
    return created


async def replace_bcc_token(
    session: AsyncSession, location_id: str, token: str, digest: str, *, now: dt.datetime
) -> BccAddress:
    """Creates or replaces the location's token: the old digest matches nothing from this commit on."""
    row = BccAddressRow.__table__
    updated = await session.execute(
        update(row)
        .where(row.c.location_id == location_id)
        .values(token=token, token_digest=digest, created_at=now)
        .returning(row.c.location_id)
    )
    if updated.first() is None:
        return await create_bcc_address(session, location_id, token, digest, now=now)
    replaced = await get_bcc_address(session, location_id)
    assert replaced is not None
    return replaced


async def bcc_location_for_digest(session: AsyncSession, digest: str) -> str | None:
    row = BccAddressRow.__table__
    result = await session.execute(select(row.c.location_id).where(row.c.token_digest == digest))
    return result.scalar_one_or_none()


async def log_drop(
    session: AsyncSession,
    *,
    drop_id: str,
    location_id: str,
    content_digest: str,
    rfc_message_id: str,
    sender: str,
    accepted: bool,
    reason: str,
    now: dt.datetime,
) -> None:
    """One line of the drop log (R16): ids, addresses and the reason only, never content."""
    session.add(
        BccDropRow(
            drop_id=drop_id,
            location_id=location_id,
            content_digest=content_digest,
            rfc_message_id=rfc_message_id[:998],
            sender=sender[:320],
            accepted=accepted,
            reason=reason,
            received_at=now,
        )
    )
    await session.flush()


async def keep_drop_content(
    session: AsyncSession, drop_id: str, raw: bytes, *, expires_at: dt.datetime
) -> None:
    session.add(BccDropContentRow(drop_id=drop_id, raw=raw, expires_at=expires_at))
    await session.flush()


async def drop_content(session: AsyncSession, drop_id: str, *, now: dt.datetime) -> bytes | None:
    """The kept raw message of an accepted drop; None when unknown or past its retention."""
    table = BccDropContentRow.__table__
    result = await session.execute(
        select(table.c.raw).where(table.c.drop_id == drop_id, table.c.expires_at > now)
    )
    return result.scalar_one_or_none()


async def purge_drop_contents(session: AsyncSession, *, now: dt.datetime) -> int:
    """Forgets the content of drops past their retention; returns how many."""
    table = BccDropContentRow.__table__
    result = await session.execute(delete(table).where(table.c.expires_at <= now).returning(table.c.drop_id))
    return len(result.all())


async def drop_log(session: AsyncSession, location_id: str) -> list[BccDropRow]:
    """The location's drop log, oldest first."""
    result = await session.execute(
        select(BccDropRow).where(BccDropRow.location_id == location_id).order_by(BccDropRow.received_at)
    )
    return list(result.scalars())
