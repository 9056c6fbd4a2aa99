"""The rolling 24-hour send quota of a mailbox (R14): whether one more send fits, and what GetQuota reports.

What counts is messages: one ledger entry per send, whatever its recipient count (at most 100, checked when the
email is validated). Recipients are recorded with each entry so a recipient-based limit can be added later.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from services.outbound.domain.errors import QuotaCause, QuotaExceeded

WINDOW = dt.timedelta(hours=24)
# Gmail's 429 "(Mail sending)" message names the end of the block, e.g.
# "User-rate limit exceeded.  Retry after 2026-07-16T00:34:55.867Z (Mail sending)".
_GMAIL_RETRY_AFTER = re.compile(r"Retry after (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z)")


@dataclass(frozen=True)
class QuotaStatus:
    daily_limit: int
    used: int
    remaining: int
    # When the quota next grows: the oldest send leaving the window; during Gmail's block its end, or the later
    # of the two when the window is full too. None when nothing limits the mailbox.
    reset_time: dt.datetime | None
    blocked_until: dt.datetime | None


def active_block(blocked_until: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return blocked_until if blocked_until is not None and blocked_until > now else None


def sends_that_must_leave(*, daily_limit: int, used: int) -> int:
    """How many sends of the window must age out before one more fits (0 when it fits now)."""
    return max(used - daily_limit + 1, 0)


def check_admission(
    *,
    mailbox_id: str,
    daily_limit: int,
    used: int,
    blocking_send_time: dt.datetime | None,
    blocked_until: dt.datetime | None,
    now: dt.datetime,
) -> None:
    """Raises QuotaExceeded unless one more send fits.

    `blocking_send_time` is the send time of the newest of the sends that must leave the window first (the
    `sends_that_must_leave`-th oldest); sending is possible again one window after it.
    """
    block = active_block(blocked_until, now)
    if block is not None:
        raise QuotaExceeded(
            mailbox_id=mailbox_id, retry_time=block, cause=QuotaCause.GMAIL_BLOCK, daily_limit=daily_limit
        )
    if sends_that_must_leave(daily_limit=daily_limit, used=used) == 0:
        return
    if blocking_send_time is None:
        raise ValueError("blocking_send_time is required when the window is full")
    raise QuotaExceeded(
        mailbox_id=mailbox_id,
        retry_time=blocking_send_time + WINDOW,
        cause=QuotaCause.ROLLING_LIMIT,
        daily_limit=daily_limit,
    )


def quota_status(
    *,
    daily_limit: int,
    used: int,
    oldest_send_time: dt.datetime | None,
    blocked_until: dt.datetime | None,
    now: dt.datetime,
) -> QuotaStatus:
    block = active_block(blocked_until, now)
    reset_time = oldest_send_time + WINDOW if oldest_send_time is not None else None
    if block is not None:
        window_full = used >= daily_limit and reset_time is not None and reset_time > block
        reset_time = reset_time if window_full else block
    return QuotaStatus(
        daily_limit=daily_limit,
        used=used,
        remaining=0 if block is not None else max(daily_limit - used, 0),
        reset_time=reset_time,
        blocked_until=block,
    )


def gmail_block_end(
    error_message: str, now: dt.datetime, fallback: dt.timedelta = dt.timedelta(hours=1)
) -> dt.datetime:
    """When Gmail's sending-limit answer says sending is possible again.

    Without a parsable time the block lasts `fallback`: short, because the next send that Gmail refuses sets
    a new block anyway, while a wrong long block would silence the user for a day.
    """
    match = _GMAIL_RETRY_AFTER.search(error_message)
    if match is None:
        return now + fallback
    return dt.datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).astimezone(dt.UTC)
