"""The per-mailbox send ledger (R14): admits a send only while the rolling 24-hour window has room, atomically
across every replica, on SQLite and PostgreSQL.

Admission serialises on the mailbox's row: PostgreSQL takes `SELECT ... FOR UPDATE` on it; on SQLite the first
statement is a write (the row's upsert), which takes the database's single write lock for the rest of the
transaction (and services.runtime.db starts write transactions with BEGIN IMMEDIATE anyway). Only then are the
window counted and the entry inserted, so no two transactions can both see the last free slot. Time is the
database's clock, not a replica's. Everything happens in the caller's session, so the ledger entry commits or
rolls back together with whatever else the caller writes (the send record, its outbox event).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    bindparam,
    func,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.outbound.domain.quota import (
    WINDOW,
    AccountType,
    DailyLimit,
    DailyLimits,
    QuotaStatus,
    check_admission,
    daily_limit_of,
    quota_status,
    sends_that_must_leave,
)
from services.runtime.db import dialect_insert, once_per_dialect, upsert_insert
from services.runtime.instruments import instruments


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in and out; SQLite stores it naive (UTC), PostgreSQL as timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass a timezone-aware UTC time")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


send_ledger_metadata = MetaData()

send_mailboxes = Table(
    "send_mailboxes",
    send_ledger_metadata,
    Column("mailbox_id", String(64), primary_key=True),
    # Set explicitly through the API (SetSendLimit); NULL: the limit of the account type.
    Column("daily_limit", Integer, nullable=True),
    # CONSUMER or WORKSPACE as Google told auth at connect time; NULL or UNKNOWN: it did not say.
    Column("account_type", String(16), nullable=True),
    # Set from Gmail's own sending-limit answer; sending is closed until then (R14).
    Column("blocked_until", UtcDateTime, nullable=True),
)

send_ledger_entries = Table(
    "send_ledger_entries",
    send_ledger_metadata,
    Column("entry_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("mailbox_id", String(64), ForeignKey("send_mailboxes.mailbox_id"), nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("sent_at", UtcDateTime, nullable=False),
    Column("recipients", Integer, nullable=False),
    # A send that certainly never left (Gmail refused it) gives its slot back but keeps its key.
    Column("released_at", UtcDateTime, nullable=True),
    Index("ix_send_ledger_entries_window", "mailbox_id", "sent_at"),
)


def add_send_ledger_tables(metadata: MetaData) -> dict[str, Table]:
    """Adds the ledger's tables to a service's MetaData (for Alembic autogenerate and create_all in tests).

    The ledger's statements name only tables and columns, so they run against tables created from either.
    """
    return {table.name: table.to_metadata(metadata) for table in send_ledger_metadata.sorted_tables}


@dataclass(frozen=True)
class Admission:
    mailbox_id: str
    idempotency_key: str
    admitted_at: dt.datetime
    # Sends in the window including this one; for a replay, the window as it is now.
    used: int
    daily_limit: int
    # True when the key was admitted before: nothing new was counted.
    replayed: bool


class SendLedger:
    """Admission, release, Gmail blocks and the quota view of every mailbox's rolling window."""

    def __init__(
        self, *, default_daily_limit: int = 500, workspace_daily_limit: int = 2000, lock_mailbox: bool = True
    ) -> None:
        if default_daily_limit < 1 or workspace_daily_limit < 1:
            raise ValueError("daily limits must be at least 1")
        # A consumer account's limit, also held by an account whose type is unknown.
        self.default_daily_limit = default_daily_limit
        self.limits = DailyLimits(consumer=default_daily_limit, workspace=workspace_daily_limit)
        # Off only in the negative-control test that shows the limit is over-admitted without the lock.
        self._lock_mailbox = lock_mailbox

    async def admit(
        self,
        session: AsyncSession,
        *,
        mailbox_id: str,
        idempotency_key: str,
        recipients: int,
        mailbox_email: str = "",
    ) -> Admission:
        """Records one send in the window or raises QuotaExceeded; the same key is admitted once."""
        if self._lock_mailbox:
            mailbox = await self._lock_mailbox_row(session, mailbox_id)
        else:
            # Nothing is written before the count here, so nothing serialises the admissions.
            mailbox = (
                await session.execute(
                    select(*_MAILBOX_COLUMNS, _now(session))
                    .select_from(send_mailboxes)
                    .where(send_mailboxes.c.mailbox_id == mailbox_id)
                )
            ).one_or_none()
            if mailbox is None:
                mailbox = (
                    await session.execute(
                        select(
                            null().label("daily_limit"),
                            null().label("account_type"),
                            null().label("blocked_until"),
                            _now(session),
                        )
                    )
                ).one()
        daily_limit = self._limit_of(mailbox).value
        now: dt.datetime = mailbox.now
        # One round trip while the lock is held: every statement here is paid once per send of the mailbox.
        window = (
            await session.execute(
                _WINDOW_AND_KEY,
                {"mailbox_id": mailbox_id, "window_start": now - WINDOW, "idempotency_key": idempotency_key},
            )
        ).one()
        used = int(window.used)
        if window.previous_mailbox_id not in (None, mailbox_id):
            raise ValueError(
                f"idempotency key {idempotency_key!r} was admitted for mailbox {window.previous_mailbox_id}"
            )
        if window.previous_sent_at is not None:
            return Admission(
                mailbox_id, idempotency_key, window.previous_sent_at, used, daily_limit, replayed=True
            )
        must_leave = sends_that_must_leave(daily_limit=daily_limit, used=used)
        check_admission(
            mailbox_id=mailbox_id,
            mailbox_email=mailbox_email,
            daily_limit=daily_limit,
            used=used,
            blocking_send_time=(
                await self._nth_oldest_send_time(session, mailbox_id, now, must_leave) if must_leave else None
            ),
            blocked_until=mailbox.blocked_until,
            now=now,
        )
        if not self._lock_mailbox:
            await self._ensure_mailbox_row(session, mailbox_id)
        await session.execute(
            _INSERT_ENTRY,
            {
                "mailbox_id": mailbox_id,
                "idempotency_key": idempotency_key,
                "sent_at": now,
                "recipients": recipients,
            },
        )
        instruments().send_limiter_remaining.record(
            daily_limit - (used + 1), {"mailsync.mailbox_tier": _account_type(mailbox).value.lower()}
        )
        return Admission(mailbox_id, idempotency_key, now, used + 1, daily_limit, replayed=False)

    async def release(self, session: AsyncSession, *, idempotency_key: str) -> bool:
        """Gives a send's slot back (it certainly did not go out); True when an entry was released."""
        now = await database_now(session)
        result = await session.execute(
            update(send_ledger_entries)
            .where(
                send_ledger_entries.c.idempotency_key == idempotency_key,
                send_ledger_entries.c.released_at.is_(None),
            )
            .values(released_at=now)
            .returning(send_ledger_entries.c.entry_id)
        )
        return result.first() is not None

    async def record_gmail_block(
        self, session: AsyncSession, *, mailbox_id: str, blocked_until: dt.datetime
    ) -> dt.datetime:
        """Closes sending until Gmail's named time; a later block already recorded is kept. Returns the end."""
        mailbox = await self._lock_mailbox_row(session, mailbox_id)
        current = mailbox.blocked_until
        if current is not None and current >= blocked_until:
            return current
        await session.execute(
            update(send_mailboxes)
            .where(send_mailboxes.c.mailbox_id == mailbox_id)
            .values(blocked_until=blocked_until)
        )
        return blocked_until

    async def set_daily_limit(
        self, session: AsyncSession, *, mailbox_id: str, daily_limit: int | None
    ) -> None:
        """A mailbox's explicitly set limit (None: the limit of its account type again)."""
        if daily_limit is not None and daily_limit < 1:
            raise ValueError("daily_limit must be at least 1")
        await self._lock_mailbox_row(session, mailbox_id)
        await session.execute(
            update(send_mailboxes)
            .where(send_mailboxes.c.mailbox_id == mailbox_id)
            .values(daily_limit=daily_limit)
        )

    async def set_account_type(
        self, session: AsyncSession, *, mailbox_id: str, account_type: AccountType
    ) -> None:
        """What the mailbox's connection says the account is (it decides the limit unless one was set)."""
        await self._lock_mailbox_row(session, mailbox_id)
        await session.execute(
            update(send_mailboxes)
            .where(send_mailboxes.c.mailbox_id == mailbox_id)
            .values(account_type=account_type.value)
        )

    async def read_quota(self, session: AsyncSession, *, mailbox_id: str) -> QuotaStatus:
        """Used, remaining and reset time of the mailbox's window (changes nothing)."""
        now = await database_now(session)
        mailbox = (
            await session.execute(select(send_mailboxes).where(send_mailboxes.c.mailbox_id == mailbox_id))
        ).one_or_none()
        window = (
            await session.execute(
                select(func.count(), func.min(send_ledger_entries.c.sent_at)).where(
                    *self._in_window(mailbox_id, now)
                )
            )
        ).one()
        limit = self._limit_of(mailbox)
        return quota_status(
            daily_limit=limit.value,
            used=window[0],
            oldest_send_time=window[1],
            blocked_until=mailbox.blocked_until if mailbox is not None else None,
            now=now,
            limit_source=limit.source,
            account_type=_account_type(mailbox),
        )

    def _limit_of(self, mailbox: Any) -> DailyLimit:
        explicit = None if mailbox is None or mailbox.daily_limit is None else int(mailbox.daily_limit)
        return daily_limit_of(explicit, _account_type(mailbox), self.limits)

    async def _ensure_mailbox_row(self, session: AsyncSession, mailbox_id: str) -> None:
        await session.execute(
            upsert_insert(session)(send_mailboxes)
            .values(mailbox_id=mailbox_id)
            .on_conflict_do_nothing(index_elements=["mailbox_id"])
        )

    async def _lock_mailbox_row(self, session: AsyncSession, mailbox_id: str) -> Any:
        """The mailbox's row (created if missing) with the database's time, locked until the transaction ends.

        An upsert that updates on conflict row-locks on PostgreSQL like FOR UPDATE; on SQLite, being a write, it
        takes the database's write lock. Either way no other admission for the mailbox can interleave after it.
        """
        return (await session.execute(_lock_mailbox_statement(session), {"mailbox_id": mailbox_id})).one()

    def _in_window(self, mailbox_id: str, now: dt.datetime) -> tuple[Any, ...]:
        return _window_conditions(mailbox_id, now - WINDOW)

    async def _count_window(self, session: AsyncSession, mailbox_id: str, now: dt.datetime) -> int:
        count = await session.scalar(select(func.count()).where(*self._in_window(mailbox_id, now)))
        return int(count or 0)

    async def _nth_oldest_send_time(
        self, session: AsyncSession, mailbox_id: str, now: dt.datetime, nth: int
    ) -> dt.datetime | None:
        return await session.scalar(
            select(send_ledger_entries.c.sent_at)
            .where(*self._in_window(mailbox_id, now))
            .order_by(send_ledger_entries.c.sent_at, send_ledger_entries.c.entry_id)
            .offset(nth - 1)
            .limit(1)
        )


_MAILBOX_COLUMNS = (
    send_mailboxes.c.daily_limit,
    send_mailboxes.c.account_type,
    send_mailboxes.c.blocked_until,
)


# An admission's count of the mailbox's window and its key's earlier entry, in one statement built once with bound
# values (built anew per send, it cost the coercion of each value and the derivation of its cache key).
def _window_conditions(mailbox_id: Any, window_start: Any) -> tuple[Any, ...]:
    """The mailbox's entries that count against its window (values, or bind parameters of a statement built once)."""
    return (
        send_ledger_entries.c.mailbox_id == mailbox_id,
        send_ledger_entries.c.sent_at > window_start,
        send_ledger_entries.c.released_at.is_(None),
    )


_WINDOW_AND_KEY = select(
    select(func.count())
    .where(*_window_conditions(bindparam("mailbox_id"), bindparam("window_start", type_=UtcDateTime)))
    .scalar_subquery()
    .label("used"),
    select(send_ledger_entries.c.sent_at)
    .where(send_ledger_entries.c.idempotency_key == bindparam("idempotency_key"))
    .scalar_subquery()
    .label("previous_sent_at"),
    select(send_ledger_entries.c.mailbox_id)
    .where(send_ledger_entries.c.idempotency_key == bindparam("idempotency_key"))
    .scalar_subquery()
    .label("previous_mailbox_id"),
)
_INSERT_ENTRY = send_ledger_entries.insert()


# The mailbox row's locking upsert, built once per dialect (every send runs it while holding the lock).
@once_per_dialect
def _lock_mailbox_statement(dialect: str) -> Any:
    upsert = dialect_insert(dialect)(send_mailboxes).values(mailbox_id=bindparam("mailbox_id"))
    return upsert.on_conflict_do_update(
        index_elements=["mailbox_id"], set_={"mailbox_id": upsert.excluded.mailbox_id}
    ).returning(*_MAILBOX_COLUMNS, _clock(dialect))


def _account_type(mailbox: Any) -> AccountType:
    value = None if mailbox is None else mailbox.account_type
    try:
        return AccountType(value) if value else AccountType.UNKNOWN
    except ValueError:
        return AccountType.UNKNOWN


def _now(session: AsyncSession) -> Any:
    """The database's clock as a column named "now": one clock for every replica, so their skew never moves
    the window's edge."""
    return _clock(session.get_bind().dialect.name)


def _clock(dialect: str) -> Any:
    """`_now` for a dialect named as `Database.dialect` names it."""
    if dialect == "postgresql":
        # clock_timestamp(), not now(): now() is the transaction's start, possibly long before the lock was won.
        return func.clock_timestamp(type_=UtcDateTime).label("now")
    return func.strftime("%Y-%m-%d %H:%M:%f", "now", type_=UtcDateTime).label("now")


async def database_now(session: AsyncSession) -> dt.datetime:
    """The database's current time, UTC."""
    return (await session.execute(select(_now(session)))).scalar_one()
