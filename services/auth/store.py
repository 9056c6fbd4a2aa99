"""The auth service's tables and queries: CRM users (versioned), mailboxes with their sealed tokens and refresh
lease, connections (one active per user and location), and OAuth states.

Rows never leave this module: queries return the domain's value types (services.auth.domain) or small records.
Tokens are stored sealed (services.auth.crypto) and bound to "mailbox:<id>", so a ciphertext copied to another
mailbox row does not decrypt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.auth.crypto import SealedToken, SecretToken, TokenCipher
from services.auth.domain import (
    ACTIVE_STATES,
    Connection,
    ConnectionState,
    OAuthState,
    UserRecord,
    plan_user_upsert,
)
from services.runtime.db import Database, constant_in, upsert_insert
from services.runtime.messaging_tables import add_runtime_tables

_WHEN = DateTime(timezone=True)
REFRESH_TOKEN = "refresh_token"
ACCESS_TOKEN = "access_token"

metadata = MetaData()
add_runtime_tables(metadata)


class Base(DeclarativeBase):
    metadata = metadata


class UserRow(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    crm_email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(256), default="")
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(_WHEN)


class UserLocationRow(Base):
    __tablename__ = "user_locations"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True)
    location_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class MailboxRow(Base):
    """One per Gmail address: one grant, one watch, however many connections use it."""

    __tablename__ = "mailboxes"

    mailbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    refresh_token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    refresh_token_key_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    access_token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    access_token_key_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    access_token_expires_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    granted_scopes: Mapped[str] = mapped_column(Text, default="")
    # Set when Google refused the grant for good (R12): no refresh is tried again until the user reconnects.
    grant_failed_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    grant_failure: Mapped[str] = mapped_column(Text, default="")
    watch_expires_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    watch_history_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    watch_error: Mapped[str] = mapped_column(Text, default="")
    # One refresh at a time across replicas: whoever holds an unexpired lease refreshes, the others wait.
    refresh_lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    refresh_lease_expires_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(_WHEN)
    # CONSUMER, WORKSPACE or UNKNOWN, as Google's ID token said at the last connect (services.auth.account_type).
    account_type: Mapped[str] = mapped_column(String(16), default="UNKNOWN", server_default="UNKNOWN")


_ACTIVE_SQL = text("state IN (" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")")


class ConnectionRow(Base):
    __tablename__ = "connections"
    __table_args__ = (
        # One active connection per (user, location): a partial unique index, on both SQLite and PostgreSQL.
        Index(
            "uq_connections_active_user_location",
            "user_id",
            "location_id",
            unique=True,
            sqlite_where=_ACTIVE_SQL,
            postgresql_where=_ACTIVE_SQL,
        ),
        Index("ix_connections_mailbox", "mailbox_id"),
        Index("ix_connections_location", "location_id"),
    )

    connection_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    location_id: Mapped[str] = mapped_column(String(128))
    mailbox_id: Mapped[str] = mapped_column(ForeignKey("mailboxes.mailbox_id"))
    state: Mapped[str] = mapped_column(String(32))
    start_history_id: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[dt.datetime] = mapped_column(_WHEN)
    state_change_time: Mapped[dt.datetime] = mapped_column(_WHEN)
    replaced_by_connection_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class OAuthStateRow(Base):
    __tablename__ = "oauth_states"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    location_id: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_verifier: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(_WHEN)
    expires_at: Mapped[dt.datetime] = mapped_column(_WHEN)
    used_at: Mapped[dt.datetime | None] = mapped_column(_WHEN, nullable=True)
    return_url: Mapped[str] = mapped_column(Text, default="")


AUTH_TABLES = ("users", "user_locations", "mailboxes", "connections", "oauth_states")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; everything here is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _insert(session: AsyncSession) -> Any:
    return upsert_insert(session)


def mailbox_row_key(mailbox_id: str) -> str:
    """The associated-data row name that binds a mailbox's tokens to it."""
    return f"mailbox:{mailbox_id}"


# Users ------------------------------------------------------------------------------------------------------


async def upsert_user(
    session: AsyncSession, user: UserRecord, *, now: dt.datetime, scope: frozenset[str] | None = None
) -> bool:
    """Creates or updates a user as a caller scoped to `scope` may (domain.plan_user_upsert); returns whether
    the request applied. Raises UserSharedWithOtherLocations when the scoped caller may not make the change.

    The stored user is read under a row lock (SQLite: the write transaction's own lock), so concurrent upserts
    are planned one after the other.
    """
    created = await session.execute(
        _insert(session)(UserRow)
        .values(
            user_id=user.user_id,
            crm_email=user.crm_email,
            display_name=user.display_name,
            version=user.version,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["user_id"])
        .returning(UserRow.user_id)
    )
    if created.first() is not None:
        await _replace_memberships(session, user.user_id, user.location_ids)
        return True
    plan = plan_user_upsert(await get_user(session, user.user_id, for_update=True), user, scope)
    if plan.write is not None:
        await session.execute(
            update(UserRow)
            .where(UserRow.user_id == user.user_id)
            .values(
                crm_email=plan.write.crm_email,
                display_name=plan.write.display_name,
                version=plan.write.version,
                updated_at=now,
            )
        )
        await _replace_memberships(session, user.user_id, plan.write.location_ids)
    return plan.applied


async def _replace_memberships(session: AsyncSession, user_id: str, location_ids: Iterable[str]) -> None:
    await session.execute(delete(UserLocationRow).where(UserLocationRow.user_id == user_id))
    for location_id in dict.fromkeys(location_ids):
        session.add(UserLocationRow(user_id=user_id, location_id=location_id))
    await session.flush()


async def get_user(session: AsyncSession, user_id: str, *, for_update: bool = False) -> UserRecord | None:
    """The user (`for_update`: its row locked until the transaction ends, on PostgreSQL)."""
    query = select(UserRow).where(UserRow.user_id == user_id)
    row = (await session.execute(query.with_for_update() if for_update else query)).scalar_one_or_none()
    if row is None:
        return None
    locations = await session.scalars(
        select(UserLocationRow.location_id)
        .where(UserLocationRow.user_id == user_id)
        .order_by(UserLocationRow.location_id)
    )
    return UserRecord(row.user_id, row.crm_email, row.display_name, tuple(locations), row.version)


async def list_users(
    session: AsyncSession,
    location_id: str,
    *,
    email: str | None = None,
    limit: int = 100,
    after_user_id: str | None = None,
) -> list[UserRecord]:
    """Users of a location ordered by id (keyset paging after `after_user_id`); with `email`, only those whose
    CRM address or mailbox connected in that location is that address (case-insensitive)."""
    query = (
        select(UserRow.user_id)
        .join(UserLocationRow, UserLocationRow.user_id == UserRow.user_id)
        .where(UserLocationRow.location_id == location_id)
    )
    if email:
        address = normalize_email(email)
        connected = (
            select(ConnectionRow.user_id)
            .join(MailboxRow, MailboxRow.mailbox_id == ConnectionRow.mailbox_id)
            .where(
                ConnectionRow.location_id == location_id,
                ConnectionRow.state.in_([s.value for s in ACTIVE_STATES]),
                MailboxRow.email == address,
            )
        )
        query = query.where(or_(func.lower(UserRow.crm_email) == address, UserRow.user_id.in_(connected)))
    if after_user_id:
        query = query.where(UserRow.user_id > after_user_id)
    user_ids = list(await session.scalars(query.order_by(UserRow.user_id).limit(limit)))
    users = [await get_user(session, user_id) for user_id in user_ids]
    return [user for user in users if user is not None]


# Mailboxes and tokens ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailboxRecord:
    mailbox_id: str
    email: str
    granted_scopes: frozenset[str]
    access_token_expires_at: dt.datetime | None
    grant_failed_at: dt.datetime | None
    grant_failure: str
    watch_expires_at: dt.datetime | None
    watch_history_id: int | None
    watch_error: str
    has_refresh_token: bool
    account_type: str = "UNKNOWN"


# Every ingest pass and send asks for a mailbox and its connections (GetMailbox, GetConnection): built once, as Core
# selects with bound ids, they skip the ORM's identity map and the per-call construction and cache-key walk of the
# statement (GetMailbox's reads: 2.0 -> 1.7 ms of CPU, medians of three alternated runs on a loaded machine).
_MAILBOX_BY_ID = select(MailboxRow.__table__).where(
    MailboxRow.__table__.c.mailbox_id == bindparam("mailbox_id")
)
_CONNECTIONS_OF_MAILBOX = (
    select(ConnectionRow.__table__)
    .where(ConnectionRow.__table__.c.mailbox_id == bindparam("mailbox_id"))
    .order_by(ConnectionRow.__table__.c.start_time, ConnectionRow.__table__.c.connection_id)
)


def _mailbox_record(row: MailboxRow | Row[Any]) -> MailboxRecord:
    return MailboxRecord(
        mailbox_id=row.mailbox_id,
        email=row.email,
        granted_scopes=frozenset(row.granted_scopes.split()),
        access_token_expires_at=_utc(row.access_token_expires_at),
        grant_failed_at=_utc(row.grant_failed_at),
        grant_failure=row.grant_failure,
        watch_expires_at=_utc(row.watch_expires_at),
        watch_history_id=row.watch_history_id,
        watch_error=row.watch_error,
        has_refresh_token=row.refresh_token_sealed is not None,
        account_type=row.account_type or "UNKNOWN",
    )


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def ensure_mailbox(session: AsyncSession, email: str, *, new_mailbox_id: str, now: dt.datetime) -> str:
    """The mailbox id of a Gmail address, creating the mailbox with `new_mailbox_id` when it is new."""
    address = normalize_email(email)
    statement = (
        _insert(session)(MailboxRow)
        .values(
            mailbox_id=new_mailbox_id,
            email=address,
            granted_scopes="",
            grant_failure="",
            watch_error="",
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["email"])
    )
    await session.execute(statement)
    mailbox_id = await session.scalar(select(MailboxRow.mailbox_id).where(MailboxRow.email == address))
    assert mailbox_id is not None
    return mailbox_id


async def get_mailbox(session: AsyncSession, mailbox_id: str) -> MailboxRecord | None:
    row = (await session.execute(_MAILBOX_BY_ID, {"mailbox_id": mailbox_id})).first()
    return None if row is None else _mailbox_record(row)


async def find_mailbox_by_email(session: AsyncSession, email: str) -> MailboxRecord | None:
    row = await session.scalar(select(MailboxRow).where(MailboxRow.email == normalize_email(email)))
    return None if row is None else _mailbox_record(row)


async def store_grant(
    session: AsyncSession,
    cipher: TokenCipher,
    mailbox_id: str,
    *,
    refresh_token: SecretToken | None,
    access_token: SecretToken,
    access_token_expires_at: dt.datetime | None,
    granted_scopes: Iterable[str],
    account_type: str | None = None,
) -> None:
    """Stores a fresh grant from the connect flow and clears any earlier grant failure (a reconnect, R12).

    Google omits the refresh token when it did not issue a new one; the stored one is then kept. The account
    type is what this grant's ID token said (None: leave what is known).
    """
    key = mailbox_row_key(mailbox_id)
    values: dict[str, object] = {
        "granted_scopes": " ".join(sorted(set(granted_scopes))),
        "grant_failed_at": None,
        "grant_failure": "",
    }
    if account_type is not None:
        values["account_type"] = account_type
    if refresh_token is not None:
        sealed_refresh = cipher.seal(refresh_token, row=key, column=REFRESH_TOKEN)
        values |= {
            "refresh_token_sealed": sealed_refresh.ciphertext,
            "refresh_token_key_version": sealed_refresh.key_version,
        }
    sealed_access = cipher.seal(access_token, row=key, column=ACCESS_TOKEN)
    values |= {
        "access_token_sealed": sealed_access.ciphertext,
        "access_token_key_version": sealed_access.key_version,
        "access_token_expires_at": access_token_expires_at,
    }
    await session.execute(update(MailboxRow).where(MailboxRow.mailbox_id == mailbox_id).values(**values))


async def store_refreshed_token(
    session: AsyncSession,
    cipher: TokenCipher,
    mailbox_id: str,
    *,
    access_token: SecretToken,
    expires_at: dt.datetime | None,
    rotated_refresh_token: SecretToken | None = None,
) -> None:
    """Stores the result of a refresh; a rotated refresh token replaces the old one in the same write."""
    key = mailbox_row_key(mailbox_id)
    sealed_access = cipher.seal(access_token, row=key, column=ACCESS_TOKEN)
    values: dict[str, object] = {
        "access_token_sealed": sealed_access.ciphertext,
        "access_token_key_version": sealed_access.key_version,
        "access_token_expires_at": expires_at,
    }
    if rotated_refresh_token is not None:
        sealed_refresh = cipher.seal(rotated_refresh_token, row=key, column=REFRESH_TOKEN)
        values |= {
            "refresh_token_sealed": sealed_refresh.ciphertext,
            "refresh_token_key_version": sealed_refresh.key_version,
        }
    await session.execute(update(MailboxRow).where(MailboxRow.mailbox_id == mailbox_id).values(**values))


@dataclass(frozen=True)
class StoredAccessToken:
    token: SecretToken = field(repr=False)
    expires_at: dt.datetime | None


async def load_access_token(
    session: AsyncSession, cipher: TokenCipher, mailbox_id: str
) -> StoredAccessToken | None:
    row = await session.get(MailboxRow, mailbox_id)
    if row is None or row.access_token_sealed is None or row.access_token_key_version is None:
        return None
    sealed = SealedToken(row.access_token_key_version, row.access_token_sealed)
    token = cipher.open(sealed, row=mailbox_row_key(mailbox_id), column=ACCESS_TOKEN)
    return StoredAccessToken(token, _utc(row.access_token_expires_at))


async def load_refresh_token(
    session: AsyncSession, cipher: TokenCipher, mailbox_id: str
) -> SecretToken | None:
    row = await session.get(MailboxRow, mailbox_id)
    if row is None or row.refresh_token_sealed is None or row.refresh_token_key_version is None:
        return None
    sealed = SealedToken(row.refresh_token_key_version, row.refresh_token_sealed)
    return cipher.open(sealed, row=mailbox_row_key(mailbox_id), column=REFRESH_TOKEN)


async def mark_grant_failed(session: AsyncSession, mailbox_id: str, *, reason: str, now: dt.datetime) -> bool:
    """Records that Google refused the grant for good; False when it was already recorded (no repeat events)."""
    result = await session.execute(
        update(MailboxRow)
        .where(MailboxRow.mailbox_id == mailbox_id, MailboxRow.grant_failed_at.is_(None))
        .values(
            grant_failed_at=now, grant_failure=reason, access_token_sealed=None, access_token_key_version=None
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def forget_tokens(session: AsyncSession, mailbox_id: str) -> None:
    """Deletes a released mailbox's tokens (after revoking the grant, R10/R11)."""
    await session.execute(
        update(MailboxRow)
        .where(MailboxRow.mailbox_id == mailbox_id)
        .values(
            refresh_token_sealed=None,
            refresh_token_key_version=None,
            access_token_sealed=None,
            access_token_key_version=None,
            access_token_expires_at=None,
            watch_expires_at=None,
        )
    )


async def record_watch(
    session: AsyncSession,
    mailbox_id: str,
    *,
    expires_at: dt.datetime | None,
    history_id: int | None = None,
    error: str = "",
) -> None:
    values: dict[str, object] = {"watch_error": error}
    if expires_at is not None:
        values["watch_expires_at"] = expires_at
    if history_id is not None:
        values["watch_history_id"] = history_id
    await session.execute(update(MailboxRow).where(MailboxRow.mailbox_id == mailbox_id).values(**values))


async def mailboxes_with_watch_expiring(session: AsyncSession, *, before: dt.datetime) -> list[str]:
    """Mailboxes with a live grant whose watch ends before `before` (or never started)."""
    rows = await session.scalars(
        select(MailboxRow.mailbox_id)
        .where(
            MailboxRow.refresh_token_sealed.is_not(None),
            MailboxRow.grant_failed_at.is_(None),
            or_(MailboxRow.watch_expires_at.is_(None), MailboxRow.watch_expires_at < before),
        )
        .order_by(MailboxRow.mailbox_id)
    )
    return list(rows)


# One refresh at a time --------------------------------------------------------------------------------------------


async def try_acquire_refresh_lease(
    session: AsyncSession, mailbox_id: str, owner: str, *, now: dt.datetime, ttl: dt.timedelta
) -> bool:
    """Takes the mailbox's refresh lease when it is free or expired (a conditional update, so of many replicas
    racing exactly one wins); the holder refreshes, the others re-read the token after it is released."""
    result = await session.execute(
        update(MailboxRow)
        .where(
            MailboxRow.mailbox_id == mailbox_id,
            or_(
                MailboxRow.refresh_lease_owner.is_(None),
                MailboxRow.refresh_lease_expires_at < now,
                MailboxRow.refresh_lease_owner == owner,
            ),
        )
        .values(refresh_lease_owner=owner, refresh_lease_expires_at=now + ttl)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def release_refresh_lease(session: AsyncSession, mailbox_id: str, owner: str) -> None:
    await session.execute(
        update(MailboxRow)
        .where(MailboxRow.mailbox_id == mailbox_id, MailboxRow.refresh_lease_owner == owner)
        .values(refresh_lease_owner=None, refresh_lease_expires_at=None)
    )


# Key rotation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResealProgress:
    """One rotation batch: rows found under an older key, and rows actually rewritten."""

    examined: int
    resealed: int


async def reseal_batch(session: AsyncSession, cipher: TokenCipher, *, limit: int) -> ResealProgress:
    """Re-encrypts up to `limit` mailboxes whose tokens use an older key.

    Each row is updated only if its ciphertext is still the one read (compare-and-set), so a token a refresh
    wrote meanwhile is never overwritten; repeat until nothing is examined (idempotent, restartable).
    """
    current = cipher.ring.current_version
    rows = (
        await session.scalars(
            select(MailboxRow)
            .where(
                or_(
                    MailboxRow.refresh_token_key_version != current,
                    MailboxRow.access_token_key_version != current,
                )
            )
            .order_by(MailboxRow.mailbox_id)
            .limit(limit)
        )
    ).all()
    resealed = 0
    for row in rows:
        key = mailbox_row_key(row.mailbox_id)
        conditions = [MailboxRow.mailbox_id == row.mailbox_id]
        values: dict[str, object] = {}
        for column, sealed_attr, version_attr in (
            (REFRESH_TOKEN, MailboxRow.refresh_token_sealed, MailboxRow.refresh_token_key_version),
            (ACCESS_TOKEN, MailboxRow.access_token_sealed, MailboxRow.access_token_key_version),
        ):
            ciphertext = getattr(row, sealed_attr.key)
            version = getattr(row, version_attr.key)
            if ciphertext is None or version is None or version == current:
                continue
            fresh = cipher.reseal(SealedToken(version, ciphertext), row=key, column=column)
            conditions.append(sealed_attr == ciphertext)
            values[sealed_attr.key] = fresh.ciphertext
            values[version_attr.key] = fresh.key_version
        if values:
            result = await session.execute(update(MailboxRow).where(*conditions).values(**values))
            resealed += int(result.rowcount)  # type: ignore[attr-defined]
    session.expunge_all()
    return ResealProgress(examined=len(rows), resealed=resealed)


async def rotate_token_keys(db: Database, cipher: TokenCipher, *, batch_size: int = 100) -> int:
    """Re-encrypts every token row under the ring's first key, one short transaction per batch so the service
    keeps serving; returns how many rows were rewritten. Retire the old key only after this returns."""
    total = 0
    while True:
        async with db.write() as session:
            progress = await reseal_batch(session, cipher, limit=batch_size)
        total += progress.resealed
        if progress.examined == 0:
            return total


# Connections -----------------------------------------------------------------------------------------------------


def _connection(row: ConnectionRow | Row[Any]) -> Connection:
    start_time = _utc(row.start_time)
    change_time = _utc(row.state_change_time)
    assert start_time is not None and change_time is not None
    return Connection(
        connection_id=row.connection_id,
        user_id=row.user_id,
        location_id=row.location_id,
        mailbox_id=row.mailbox_id,
        state=ConnectionState(row.state),
        start_history_id=row.start_history_id,
        start_time=start_time,
        state_change_time=change_time,
        replaced_by_connection_id=row.replaced_by_connection_id,
        last_error=row.last_error,
    )


async def save_connections(session: AsyncSession, connections: Sequence[Connection]) -> None:
    """Inserts new connections and updates known ones, in the given order: pass `order_for_saving(...)` so an
    ended connection is written before the one that takes its (user, location)."""
    for connection in connections:
        values = {
            "user_id": connection.user_id,
            "location_id": connection.location_id,
            "mailbox_id": connection.mailbox_id,
            "state": connection.state.value,
            "start_history_id": connection.start_history_id,
            "start_time": connection.start_time,
            "state_change_time": connection.state_change_time,
            "replaced_by_connection_id": connection.replaced_by_connection_id,
            "last_error": connection.last_error,
        }
        existing = await session.get(ConnectionRow, connection.connection_id)
        if existing is None:
            session.add(ConnectionRow(connection_id=connection.connection_id, **values))
        else:
            for name, value in values.items():
                setattr(existing, name, value)
        await session.flush()


def order_for_saving(connections: Iterable[Connection]) -> list[Connection]:
    """Ended connections first, so the one active connection per (user, location) is never two at once."""
    return sorted(connections, key=lambda c: c.active)


async def get_connection(session: AsyncSession, connection_id: str) -> Connection | None:
    row = await session.get(ConnectionRow, connection_id)
    return None if row is None else _connection(row)


async def active_connection(session: AsyncSession, user_id: str, location_id: str) -> Connection | None:
    row = await session.scalar(
        select(ConnectionRow).where(
            ConnectionRow.user_id == user_id,
            ConnectionRow.location_id == location_id,
            ConnectionRow.state.in_([s.value for s in ACTIVE_STATES]),
        )
    )
    return None if row is None else _connection(row)


@dataclass(frozen=True)
class ConnectionView:
    """A connection with what its API view shows of its mailbox and user."""

    connection: Connection
    mailbox: MailboxRecord | None
    user_display_name: str


def _connection_view_statement(where: Any) -> Any:
    """The connection, its mailbox's columns and its user's name: one row, `mailbox_found` NULL without a mailbox."""
    connections = ConnectionRow.__table__
    mailboxes = MailboxRow.__table__
    users = UserRow.__table__
    # The connection's own mailbox_id stands for the mailbox's (the join equates them), so names never collide.
    mailbox_columns = [column for column in mailboxes.c if column.name != "mailbox_id"]
    return (
        select(
            connections,
            *mailbox_columns,
            mailboxes.c.mailbox_id.label("mailbox_found"),
            users.c.display_name.label("user_display_name"),
        )
        .select_from(connections)
        .outerjoin(mailboxes, mailboxes.c.mailbox_id == connections.c.mailbox_id)
        .outerjoin(users, users.c.user_id == connections.c.user_id)
        .where(where)
        .limit(1)
    )


# Outbound asks for the sender's connection on every send (R10): built once as Core selects with bound values, the
# lookup skips the ORM's entity loading and the per-call construction and cache-key walk of the statement.
_CONNECTION_VIEW_BY_ID = _connection_view_statement(
    ConnectionRow.__table__.c.connection_id == bindparam("connection_id")
)
_CONNECTION_VIEW_ACTIVE = _connection_view_statement(
    and_(
        ConnectionRow.__table__.c.user_id == bindparam("user_id"),
        ConnectionRow.__table__.c.location_id == bindparam("location_id"),
        constant_in(ConnectionRow.__table__.c.state, sorted(s.value for s in ACTIVE_STATES)),
    )
)


async def connection_view(
    session: AsyncSession, *, connection_id: str | None = None, user_id: str | None = None, location_id: str
) -> ConnectionView | None:
    """The connection named by id, or else the user's active one in the location, with its mailbox and its user's
    name, in one query (outbound asks for it on every send: R10, a replaced mailbox stops at once)."""
    if connection_id:
        result = await session.execute(_CONNECTION_VIEW_BY_ID, {"connection_id": connection_id})
    else:
        result = await session.execute(
            _CONNECTION_VIEW_ACTIVE, {"user_id": user_id, "location_id": location_id}
        )
    row = result.first()
    if row is None:
        return None
    return ConnectionView(
        _connection(row),
        None if row.mailbox_found is None else _mailbox_record(row),
        row.user_display_name or "",
    )


async def connections_of_mailbox(session: AsyncSession, mailbox_id: str) -> list[Connection]:
    rows = await session.execute(_CONNECTIONS_OF_MAILBOX, {"mailbox_id": mailbox_id})
    return [_connection(row) for row in rows]


async def connections_of_location(
    session: AsyncSession, location_id: str, *, user_id: str | None = None
) -> list[Connection]:
    query = select(ConnectionRow).where(ConnectionRow.location_id == location_id)
    if user_id is not None:
        query = query.where(ConnectionRow.user_id == user_id)
    rows = await session.scalars(query.order_by(ConnectionRow.start_time, ConnectionRow.connection_id))
    return [_connection(row) for row in rows]


async def list_connections(
    session: AsyncSession,
    location_id: str,
    *,
    user_id: str | None = None,
    state: ConnectionState | None = None,
    limit: int = 100,
    after_connection_id: str | None = None,
) -> list[Connection]:
    """The connections of a location ordered by id (keyset paging after `after_connection_id`), optionally of
    one user or in one state."""
    query = select(ConnectionRow).where(ConnectionRow.location_id == location_id)
    if user_id:
        query = query.where(ConnectionRow.user_id == user_id)
    if state is not None:
        query = query.where(ConnectionRow.state == state.value)
    if after_connection_id:
        query = query.where(ConnectionRow.connection_id > after_connection_id)
    rows = await session.scalars(query.order_by(ConnectionRow.connection_id).limit(limit))
    return [_connection(row) for row in rows]


# OAuth states ----------------------------------------------------------------------------------------------------


async def save_oauth_state(session: AsyncSession, state: OAuthState) -> None:
    session.add(
        OAuthStateRow(
            digest=state.digest,
            user_id=state.user_id,
            location_id=state.location_id,
            redirect_uri=state.redirect_uri,
            code_verifier=state.code_verifier,
            created_at=state.created_at,
            expires_at=state.expires_at,
            used_at=state.used_at,
            return_url=state.return_url,
        )
    )
    await session.flush()


async def find_oauth_state(session: AsyncSession, digest: str) -> OAuthState | None:
    row = await session.get(OAuthStateRow, digest)
    if row is None:
        return None
    created_at, expires_at = _utc(row.created_at), _utc(row.expires_at)
    assert created_at is not None and expires_at is not None
    return OAuthState(
        digest=row.digest,
        user_id=row.user_id,
        location_id=row.location_id,
        redirect_uri=row.redirect_uri,
        code_verifier=row.code_verifier,
        created_at=created_at,
        expires_at=expires_at,
        used_at=_utc(row.used_at),
        return_url=row.return_url,
    )


async def consume_oauth_state(session: AsyncSession, digest: str, *, now: dt.datetime) -> bool:
    """Marks the state used if nobody did yet; False means a concurrent callback already used it."""
    result = await session.execute(
        update(OAuthStateRow)
        .where(OAuthStateRow.digest == digest, OAuthStateRow.used_at.is_(None))
        .values(used_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_expired_oauth_states(session: AsyncSession, *, now: dt.datetime) -> int:
    result = await session.execute(delete(OAuthStateRow).where(OAuthStateRow.expires_at < now))
    return int(result.rowcount)  # type: ignore[attr-defined]
