"""Attachment rows: which placed messages still need their content fetched, and where fetched content lives."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.threading.store.models import AttachmentRow


@dataclass(frozen=True)
class AttachmentToFetch:
    message_id: str
    attachment_id: str
    location_id: str
    mailbox_id: str
    gmail_message_id: str
    gmail_attachment_id: str
    drop_id: str
    expected_sha256: str
    size_bytes: int
    attempts: int = 0
    # The traceparent of the trace that placed the message ("" when none): the fetch's span links to it.
    caused_by: str = ""


@dataclass(frozen=True)
class StoredAttachment:
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    blob_sha256: str
    # Why the content will never be served; empty while it may still come.
    unavailable_reason: str = ""


async def attachments_to_fetch(
    session: AsyncSession, *, limit: int, max_attempts: int, now: dt.datetime
) -> list[AttachmentToFetch]:
    """Attachments still without content that may be tried at `now` (none whose backoff runs past it)."""
    rows = (
        (
            await session.execute(
                select(AttachmentRow)
                .where(
                    AttachmentRow.blob_sha256 == "",
                    AttachmentRow.fetch_attempts < max_attempts,
                    AttachmentRow.unavailable_reason == "",
                    or_(AttachmentRow.retry_at.is_(None), AttachmentRow.retry_at <= now),
                )
                .order_by(AttachmentRow.fetch_attempts, AttachmentRow.message_id, AttachmentRow.attachment_id)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    return [
        AttachmentToFetch(
            r.message_id,
            r.attachment_id,
            r.location_id,
            r.source_mailbox_id,
            r.source_gmail_message_id,
            r.gmail_attachment_id,
            r.source_drop_id,
            r.sha256,
            r.size_bytes,
            r.fetch_attempts,
            r.placed_traceparent,
        )
        for r in rows
    ]


async def mark_fetched(
    session: AsyncSession, message_id: str, attachment_id: str, blob_sha256: str, size: int
) -> None:
    await session.execute(
        update(AttachmentRow)
        .where(AttachmentRow.message_id == message_id, AttachmentRow.attachment_id == attachment_id)
        .values(blob_sha256=blob_sha256, size_bytes=size)
    )


async def mark_fetch_failed(
    session: AsyncSession,
    message_id: str,
    attachment_id: str,
    *,
    retry_at: dt.datetime | None = None,
    give_up_reason: str = "",
) -> None:
    """One more failed attempt, tried again no sooner than `retry_at`; with `give_up_reason` the attachment is
    final: never fetched again, and readers are told why."""
    values: dict[str, object] = {"fetch_attempts": AttachmentRow.fetch_attempts + 1, "retry_at": retry_at}
    if give_up_reason:
        values["unavailable_reason"] = give_up_reason
    await session.execute(
        update(AttachmentRow)
        .where(AttachmentRow.message_id == message_id, AttachmentRow.attachment_id == attachment_id)
        .values(values)
    )


async def stored_attachment(
    session: AsyncSession, location_id: str, message_id: str, attachment_id: str
) -> StoredAttachment | None:
    row = await session.get(AttachmentRow, (message_id, attachment_id))
    if row is None or row.location_id != location_id:
        return None
    return StoredAttachment(
        row.filename, row.content_type, row.size_bytes, row.sha256, row.blob_sha256, row.unavailable_reason
    )
