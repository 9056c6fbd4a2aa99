"""The outbound service's tables and the statements on them: sends (one per location and request id, with the
state of its Gmail call and a lease saying which process is working on it) and staged attachments.

Everything runs in the caller's session, so a send's row commits together with its ledger entry and its outbox
event. The ledger's own tables live in services.outbound.ledger and join the same MetaData.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.outbound.ledger import UtcDateTime, add_send_ledger_tables
from services.runtime.db import dialect_insert, once_per_dialect, upsert_insert
from services.runtime.messaging_tables import add_runtime_tables

metadata = MetaData()
add_runtime_tables(metadata)
add_send_ledger_tables(metadata)

sends = Table(
    "sends",
    metadata,
    Column("send_id", String(64), primary_key=True),
    Column("location_id", String(128), nullable=False),
    Column("request_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("connection_id", String(64), nullable=False, default=""),
    Column("mailbox_id", String(64), nullable=False, default=""),
    Column("mailbox_email", String(320), nullable=False, default=""),
    Column("ledger_key", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("next_step", String(24), nullable=False),
    Column("gmail_calls", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    # Set for a refusal the caller gets as an error again on a replay (e.g. Gmail's own sending limit).
    Column("error_reason", String(64), nullable=False, default=""),
    Column("retry_time", UtcDateTime, nullable=True),
    Column("rfc_message_id", String(512), nullable=False),
    Column("final_rfc_message_id", String(512), nullable=False, default=""),
    Column("gmail_message_id", String(64), nullable=False, default=""),
    Column("gmail_thread_id", String(64), nullable=False, default=""),
    Column("reply_gmail_thread_id", String(64), nullable=False, default=""),
    Column("subject", Text, nullable=False, default=""),
    # JSON list, To first: what a Sent-folder search matches on besides the Message-ID.
    Column("recipients", Text, nullable=False, default="[]"),
    Column("message_date", UtcDateTime, nullable=False),
    # The exact bytes, kept until the send is settled so a proven-absent send goes out identically.
    Column("raw", LargeBinary, nullable=True),
    # The serialized PendingSend, embedded unchanged in the SentMessage event.
    Column("pending_event", LargeBinary, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("call_started_at", UtcDateTime, nullable=True),
    # When the outcome became unknown: the latest instant Gmail can have accepted the call (its error, or the
    # moment its process was known dead). With call_started_at it bounds the Sent-folder search.
    Column("call_ended_by", UtcDateTime, nullable=True),
    Column("sent_at", UtcDateTime, nullable=True),
    # False while the Message-ID Gmail kept could not be read yet (the recovery loop reads it later).
    Column("message_id_confirmed", Boolean, nullable=False, default=True, server_default=true()),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    UniqueConstraint("location_id", "request_id", name="uq_sends_location_request"),
    Index("ix_sends_state_lease", "state", "lease_expires_at"),
    Index("ix_sends_mailbox_gmail_message", "mailbox_id", "gmail_message_id"),
)

staged_attachments = Table(
    "staged_attachments",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("location_id", String(128), nullable=False),
    Column("request_id", String(200), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("content_type", String(256), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    # The send that used the upload; threading reads it from then on (GetAttachment), until expires_at.
    Column("send_id", String(64), nullable=True),
    UniqueConstraint("location_id", "request_id", name="uq_staged_attachments_location_request"),
    Index("ix_staged_attachments_expires_at", "expires_at"),
)

# States a send can still leave (recovery looks at these).
UNSETTLED_STATES = ("SENDING", "UNKNOWN")


@dataclass(frozen=True)
class SendRecord:
    send_id: str
    location_id: str
    request_id: str
    kind: str
    user_id: str
    connection_id: str
    mailbox_id: str
    mailbox_email: str
    ledger_key: str
    state: str
    next_step: str
    gmail_calls: int
    reason: str
    error_reason: str
    retry_time: dt.datetime | None
    rfc_message_id: str
    final_rfc_message_id: str
    gmail_message_id: str
    gmail_thread_id: str
    reply_gmail_thread_id: str
    subject: str
    recipients: tuple[str, ...]
    message_date: dt.datetime
    raw: bytes | None
    pending_event: bytes | None
    created_at: dt.datetime
    call_started_at: dt.datetime | None
    call_ended_by: dt.datetime | None
    sent_at: dt.datetime | None
    message_id_confirmed: bool
    lease_owner: str | None
    lease_expires_at: dt.datetime | None


def _record(row: Any) -> SendRecord:
    values = dict(row._mapping)
    values["recipients"] = tuple(json.loads(values["recipients"]))
    values["message_id_confirmed"] = bool(values["message_id_confirmed"])
    return SendRecord(**values)


def record_from_values(values: dict[str, Any]) -> SendRecord:
    """The record a freshly inserted row reads back as (saves reading it again)."""
    defaults = {column.name: None for column in sends.columns}
    defaults.update(
        {"call_ended_by": None, "sent_at": None, "message_id_confirmed": True, "retry_time": None}
    )
    merged = {**defaults, **values}
    merged["recipients"] = tuple(merged["recipients"])
    return SendRecord(**merged)


def _insert(session: AsyncSession) -> Any:
    return upsert_insert(session)


# The send's insert, built once per dialect: its values go in as parameters, so a send neither builds the statement
# nor derives its cache key from thirty literal values again.
@once_per_dialect
def _insert_send_statement(dialect: str) -> Any:
    return (
        dialect_insert(dialect)(sends)
        .on_conflict_do_nothing(index_elements=["location_id", "request_id"])
        .returning(sends.c.send_id)
    )


async def insert_send(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Inserts the send unless its (location, request id) exists; True when this call created it."""
    values = {**values, "recipients": json.dumps(list(values.get("recipients", ())))}
    return (await session.execute(_insert_send_statement(session), values)).first() is not None


# Every send first asks whether its request id is known: built once, with bound values (as `_insert_send_statement`).
_SEND_BY_REQUEST = select(sends).where(
    sends.c.location_id == bindparam("location_id"), sends.c.request_id == bindparam("request_id")
)
_SEND_BY_ID = select(sends).where(sends.c.send_id == bindparam("send_id"))


async def send_by_request(session: AsyncSession, location_id: str, request_id: str) -> SendRecord | None:
    row = (
        await session.execute(_SEND_BY_REQUEST, {"location_id": location_id, "request_id": request_id})
    ).first()
    return None if row is None else _record(row)


async def get_send(session: AsyncSession, send_id: str) -> SendRecord | None:
    row = (await session.execute(_SEND_BY_ID, {"send_id": send_id})).first()
    return None if row is None else _record(row)


async def update_send(
    session: AsyncSession,
    send_id: str,
    *,
    only_if_state: tuple[str, ...] | None = None,
    only_if_owner: str | None = None,
    **values: Any,
) -> bool:
    """Changes the send; with `only_if_state`, only while it is in one of those states, with `only_if_owner`,
    only while that process holds its lease. True when it changed."""
    return (
        await update_send_returning(
            session, send_id, only_if_state=only_if_state, only_if_owner=only_if_owner, **values
        )
        is not None
    )


async def update_send_returning(
    session: AsyncSession,
    send_id: str,
    *,
    only_if_state: tuple[str, ...] | None = None,
    only_if_owner: str | None = None,
    **values: Any,
) -> SendRecord | None:
    """`update_send` answering with the changed send (None when nothing changed): no second read."""
    statement = _update_send_statement(tuple(values), only_if_state is not None, only_if_owner is not None)
    parameters = {f"{_NEW}{name}": value for name, value in values.items()}
    parameters["send_id_is"] = send_id
    if only_if_state is not None:
        parameters["state_in"] = list(only_if_state)
    if only_if_owner is not None:
        parameters["lease_owner_is"] = only_if_owner
    row = (await session.execute(statement, parameters)).first()
    return None if row is None else _record(row)


# Bound parameters of the new values; the conditions' are named apart, so no column name can collide with them.
_NEW = "new_"


@functools.lru_cache(maxsize=64)
def _update_send_statement(columns: tuple[str, ...], if_state: bool, if_owner: bool) -> Any:
    """An update of these columns, built once per shape: the values go in as parameters, so a send neither builds
    it (coercing every value to its column) nor derives its cache key again."""
    statement = update(sends).where(sends.c.send_id == bindparam("send_id_is"))
    if if_state:
        statement = statement.where(sends.c.state.in_(bindparam("state_in", expanding=True)))
    if if_owner:
        statement = statement.where(sends.c.lease_owner == bindparam("lease_owner_is"))
    return statement.values(
        {name: bindparam(f"{_NEW}{name}", type_=sends.c[name].type) for name in columns}
    ).returning(*sends.columns)


async def take_lease(
    session: AsyncSession,
    send_id: str,
    *,
    owner: str,
    now: dt.datetime,
    until: dt.datetime,
    dead_owner: str | None = None,
) -> SendRecord | None:
    """The unsettled send, now owned by `owner` until `until`, or None when another live process owns it.

    `dead_owner` is a process known to be dead (services.outbound.liveness): its lease is taken at once."""
    holders = [
        sends.c.lease_expires_at.is_(None),
        sends.c.lease_expires_at <= now,
        sends.c.lease_owner == owner,
    ]
    if dead_owner is not None:
        holders.append(sends.c.lease_owner == dead_owner)
    result = await session.execute(
        update(sends)
        .where(sends.c.send_id == send_id, sends.c.state.in_(UNSETTLED_STATES), or_(*holders))
        .values(lease_owner=owner, lease_expires_at=until)
        .returning(*sends.columns)
    )
    row = result.first()
    return None if row is None else _record(row)


async def renew_lease(session: AsyncSession, send_id: str, *, owner: str, until: dt.datetime) -> bool:
    """Extends `owner`'s lease of an unsettled send; False when the send is settled or another owner took it."""
    result = await session.execute(
        update(sends)
        .where(
            sends.c.send_id == send_id,
            sends.c.state.in_(UNSETTLED_STATES),
            sends.c.lease_owner == owner,
        )
        .values(lease_expires_at=until)
        .returning(sends.c.send_id)
    )
    return result.first() is not None


async def sends_to_recover(session: AsyncSession, *, now: dt.datetime, limit: int = 50) -> list[str]:
    """Unsettled sends nobody holds: their lease ran out, or they wait (parked) for a time that has come."""
    rows = await session.execute(
        select(sends.c.send_id)
        .where(
            sends.c.state.in_(UNSETTLED_STATES),
            or_(sends.c.lease_expires_at.is_(None), sends.c.lease_expires_at <= now),
        )
        .order_by(sends.c.created_at)
        .limit(limit)
    )
    return [row.send_id for row in rows]


async def lease_owners(session: AsyncSession, *, now: dt.datetime, other_than: str) -> set[str]:
    """The processes holding live leases on unsettled sends, other than `other_than` (whose liveness to check)."""
    rows = await session.execute(
        select(sends.c.lease_owner)
        .where(
            sends.c.state.in_(UNSETTLED_STATES),
            sends.c.lease_owner.is_not(None),
            sends.c.lease_owner != other_than,
            sends.c.lease_expires_at > now,
        )
        .distinct()
    )
    return {row.lease_owner for row in rows}


async def sends_held_by(session: AsyncSession, owners: set[str], *, limit: int = 50) -> list[tuple[str, str]]:
    """(send id, owner) of the unsettled sends these processes hold, oldest first."""
    rows = await session.execute(
        select(sends.c.send_id, sends.c.lease_owner)
        .where(sends.c.state.in_(UNSETTLED_STATES), sends.c.lease_owner.in_(owners))
        .order_by(sends.c.created_at)
        .limit(limit)
    )
    return [(row.send_id, row.lease_owner) for row in rows]


async def claimed_gmail_messages(
    session: AsyncSession, mailbox_id: str, gmail_message_ids: list[str]
) -> set[str]:
    """Which of these Gmail messages of the mailbox are already some send's (no need to read them again)."""
    if not gmail_message_ids:
        return set()
    rows = await session.execute(
        select(sends.c.gmail_message_id).where(
            sends.c.mailbox_id == mailbox_id, sends.c.gmail_message_id.in_(gmail_message_ids)
        )
    )
    return {row.gmail_message_id for row in rows}


async def sends_with_unconfirmed_message_id(
    session: AsyncSession, *, sent_before: dt.datetime, limit: int = 50
) -> list[SendRecord]:
    """SENT sends whose Message-ID Gmail kept was not readable right after the send."""
    rows = await session.execute(
        select(sends)
        .where(
            sends.c.state == "SENT",
            sends.c.message_id_confirmed.is_(False),
            sends.c.sent_at <= sent_before,
        )
        .order_by(sends.c.sent_at)
        .limit(limit)
    )
    return [_record(row) for row in rows]


@dataclass(frozen=True)
class StagedAttachment:
    upload_id: str
    location_id: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    content: bytes


async def stage_attachment(
    session: AsyncSession,
    *,
    upload_id: str,
    location_id: str,
    request_id: str,
    filename: str,
    content_type: str,
    content: bytes,
    sha256: str,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> tuple[str, int, str]:
    """Stores the upload (the same location and request id stores once); returns (upload_id, size, sha256)."""
    await session.execute(
        _insert(session)(staged_attachments)
        .values(
            upload_id=upload_id,
            location_id=location_id,
            request_id=request_id,
            filename=filename,
            content_type=content_type,
            size_bytes=len(content),
            sha256=sha256,
            content=content,
            created_at=now,
            expires_at=expires_at,
        )
        .on_conflict_do_nothing(index_elements=["location_id", "request_id"])
    )
    row = (
        await session.execute(
            select(
                staged_attachments.c.upload_id, staged_attachments.c.size_bytes, staged_attachments.c.sha256
            ).where(
                staged_attachments.c.location_id == location_id,
                staged_attachments.c.request_id == request_id,
            )
        )
    ).one()
    return row.upload_id, int(row.size_bytes), row.sha256


async def staged_sizes(
    session: AsyncSession, location_id: str, upload_ids: list[str], *, now: dt.datetime
) -> dict[str, int]:
    """Sizes of the location's live uploads among `upload_ids` (missing, expired or foreign ones are absent)."""
    rows = await session.execute(
        select(staged_attachments.c.upload_id, staged_attachments.c.size_bytes).where(
            staged_attachments.c.upload_id.in_(upload_ids),
            staged_attachments.c.location_id == location_id,
            staged_attachments.c.expires_at > now,
        )
    )
    return {row.upload_id: int(row.size_bytes) for row in rows}


async def load_staged(
    session: AsyncSession, location_id: str, upload_ids: list[str]
) -> list[StagedAttachment]:
    rows = await session.execute(
        select(staged_attachments).where(
            staged_attachments.c.upload_id.in_(upload_ids), staged_attachments.c.location_id == location_id
        )
    )
    found = {
        row.upload_id: StagedAttachment(
            upload_id=row.upload_id,
            location_id=row.location_id,
            filename=row.filename,
            content_type=row.content_type,
            size_bytes=int(row.size_bytes),
            sha256=row.sha256,
            content=row.content,
        )
        for row in rows
    }
    return [found[upload_id] for upload_id in upload_ids if upload_id in found]


async def keep_uploads_for_send(
    session: AsyncSession, location_id: str, upload_ids: list[str], *, send_id: str, until: dt.datetime
) -> None:
    """The send uses these uploads: they stay readable (threading's GetAttachment) until `until`."""
    await session.execute(
        update(staged_attachments)
        .where(
            staged_attachments.c.upload_id.in_(upload_ids),
            staged_attachments.c.location_id == location_id,
        )
        .values(send_id=send_id, expires_at=until)
    )


@dataclass(frozen=True)
class SentAttachment:
    """An upload a send used, as threading fetches it."""

    upload_id: str
    send_id: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    content: bytes


async def sent_attachment(session: AsyncSession, location_id: str, upload_id: str) -> SentAttachment | None:
    """The upload of a send in the location (None when unknown, foreign, unused by any send, or forgotten)."""
    row = (
        await session.execute(
            select(staged_attachments).where(
                staged_attachments.c.upload_id == upload_id,
                staged_attachments.c.location_id == location_id,
                staged_attachments.c.send_id.is_not(None),
            )
        )
    ).first()
    if row is None:
        return None
    return SentAttachment(
        upload_id=row.upload_id,
        send_id=row.send_id,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=int(row.size_bytes),
        sha256=row.sha256,
        content=row.content,
    )


async def delete_expired_attachments(session: AsyncSession, *, now: dt.datetime) -> int:
    result = await session.execute(
        delete(staged_attachments)
        .where(staged_attachments.c.expires_at <= now)
        .returning(staged_attachments.c.upload_id)
    )
    return len(result.all())
