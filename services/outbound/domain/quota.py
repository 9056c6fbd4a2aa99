"""The rolling 24-hour send quota of a mailbox (R14): its daily limit, whether one more send fits, and what
GetQuota reports.

What counts is messages: one ledger entry per send, whatever its recipient count (at most 100, checked when the
email is validated). Recipients are recorded with each entry so a recipient-based limit can be added later.

The limit is the one set explicitly for the mailbox (through SetSendLimit) or else the one of its account type as
Google told it when the mailbox was connected: a Google Workspace account (2,000 by default) or a consumer account
(500). An account whose type Google did not say is held to the consumer limit, the lower one, until a limit is set.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import Enum

from services.outbound.domain.errors import QuotaCause, QuotaExceeded

WINDOW = dt.timedelta(hours=24)
# Gmail's 429 "(Mail sending)" message names the end of the block, e.g.
# "User-rate limit exceeded.  Retry after 2026-07-16T00:34:55.867Z (Mail sending)".
_GMAIL_RETRY_AFTER = re.compile(r"Retry after (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z)")


class AccountType(Enum):
    """What kind of Google account a mailbox is, as Google's own answer at connect time says (UNKNOWN: it did not)."""

    CONSUMER = "CONSUMER"
    WORKSPACE = "WORKSPACE"
    UNKNOWN = "UNKNOWN"


class LimitSource(Enum):
    """Where a mailbox's daily limit comes from."""

    SET_EXPLICITLY = "SET_EXPLICITLY"
    WORKSPACE_ACCOUNT = "WORKSPACE_ACCOUNT"
    CONSUMER_ACCOUNT = "CONSUMER_ACCOUNT"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"


@dataclass(frozen=True)
class DailyLimits:
    """The limits of the two account types (settings); an unknown account gets the consumer one."""

    consumer: int = 500
    workspace: int = 2000


@dataclass(frozen=True)
class DailyLimit:
    value: int
    source: LimitSource


def daily_limit_of(explicit: int | None, account_type: AccountType, limits: DailyLimits) -> DailyLimit:
    """The mailbox's limit: the explicit one, else its account type's (the consumer one when unknown)."""
    if explicit is not None:
        return DailyLimit(explicit, LimitSource.SET_EXPLICITLY)
    if account_type is AccountType.WORKSPACE:
        return DailyLimit(limits.workspace, LimitSource.WORKSPACE_ACCOUNT)
    if account_type is AccountType.CONSUMER:
        return DailyLimit(limits.consumer, LimitSource.CONSUMER_ACCOUNT)
    return DailyLimit(limits.consumer, LimitSource.UNKNOWN_ACCOUNT)


@dataclass(frozen=True)
class QuotaStatus:
    daily_limit: int
    used: int
    remaining: int
    # When the quota next grows: the oldest send leaving the window; during Gmail's block its end, or the later
    # of the two when the window is full too. None when nothing limits the mailbox.
    reset_time: dt.datetime | None
    blocked_until: dt.datetime | None
    limit_source: LimitSource = LimitSource.UNKNOWN_ACCOUNT
    account_type: AccountType = AccountType.UNKNOWN


def active_block(blocked_until: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return blocked_until if blocked_until is not None and blocked_until > now else None


def sends_that_must_leave(*, daily_limit: int, used: int) -> int:
    """How many sends of the window must age out before one more fits (0 when it fits now)."""
    return max(used - daily_limit + 1, 0)


def check_admission(
    *,
    mailbox_id: str,
    mailbox_email: str = "",
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
            mailbox_id=mailbox_id,
            mailbox_email=mailbox_email,
            retry_time=block,
            cause=QuotaCause.GMAIL_BLOCK,
            daily_limit=daily_limit,
        )
    if sends_that_must_leave(daily_limit=daily_limit, used=used) == 0:
        return
    if blocking_send_time is None:
        raise ValueError("blocking_send_time is required when the window is full")
    raise QuotaExceeded(
        mailbox_id=mailbox_id,
        mailbox_email=mailbox_email,
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
    limit_source: LimitSource = LimitSource.UNKNOWN_ACCOUNT,
    account_type: AccountType = AccountType.UNKNOWN,
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
        limit_source=limit_source,
        account_type=account_type,
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
