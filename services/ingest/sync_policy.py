"""How often and when a mailbox is looked at (pure): re-checks after work, the safety poll, and backoff of a
mailbox that keeps failing, which ends in FAILED and is still retried later, so no mailbox is given up for good
and none holds the others back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from services.runtime.backoff import doubling_delay


class SyncState(StrEnum):
    IDLE = "IDLE"
    SYNCING = "SYNCING"
    RESYNCING = "RESYNCING"
    BACKING_OFF = "BACKING_OFF"
    FAILED = "FAILED"
    PAUSED_REAUTH = "PAUSED_REAUTH"
    STOPPED = "STOPPED"


class CheckReason(StrEnum):
    """Why the scheduler queues a mailbox (stored with the due time)."""

    RECHECK = "RECHECK"
    POLL = "POLL"
    RETRY = "RETRY"


@dataclass(frozen=True)
class SyncTiming:
    """The knobs; defaults suit production, tests shrink them."""

    # Google drops notifications above one per second per mailbox: a mailbox that just had work is looked at
    # again this soon, so no message waits for the next push.
    recheck_delay: dt.timedelta = dt.timedelta(seconds=0.25)
    # Gmail notifies a mailbox at most once in this interval and drops the notifications of the changes made
    # within it (not delays them): the re-checks go on until the interval after the last push is over.
    gmail_push_interval: dt.timedelta = dt.timedelta(seconds=1)
    # Every mailbox is looked at at least this often even when no push arrives.
    safety_poll_interval: dt.timedelta = dt.timedelta(minutes=10)
    backoff_base: dt.timedelta = dt.timedelta(seconds=30)
    backoff_max: dt.timedelta = dt.timedelta(minutes=30)
    # After this many failed passes in a row the mailbox is FAILED and retried only every `failed_retry`.
    failures_before_failed: int = 6
    failed_retry: dt.timedelta = dt.timedelta(hours=1)
    audit_interval: dt.timedelta = dt.timedelta(hours=6)


@dataclass(frozen=True)
class FailurePlan:
    state: SyncState
    retry_at: dt.datetime


def plan_after_failure(failures: int, now: dt.datetime, timing: SyncTiming) -> FailurePlan:
    """`failures` counts this one: a doubling delay, then FAILED with a slow retry."""
    if failures >= timing.failures_before_failed:
        return FailurePlan(SyncState.FAILED, now + timing.failed_retry)
    delay = doubling_delay(timing.backoff_base, timing.backoff_max, failures)
    return FailurePlan(SyncState.BACKING_OFF, now + delay)


def next_check_after_success(
    had_work: bool,
    now: dt.datetime,
    timing: SyncTiming,
    *,
    last_push_at: dt.datetime | None = None,
    listed_at: dt.datetime | None = None,
) -> tuple[dt.datetime, CheckReason]:
    """After a pass that listed Gmail's history at `listed_at` (default: `now`): a re-check soon when it had work
    (mail is coming), else the safety poll, unless Gmail may have dropped the notification of a change made since
    the listing (`look_again_at`)."""
    if not had_work:
        again = look_again_at(last_push_at, listed_at or now, timing)
        if again is None:
            return now + timing.safety_poll_interval, CheckReason.POLL
        return again, CheckReason.RECHECK
    return now + timing.recheck_delay, CheckReason.RECHECK


def look_again_at(
    last_push_at: dt.datetime | None, listed_at: dt.datetime, timing: SyncTiming
) -> dt.datetime | None:
    """A re-check whose listing (made at `listed_at`) found nothing ends the re-checks, unless it listed within the
    interval after the last push: Gmail may have dropped the notification of a change made in what is left of it,
    so the mailbox is looked at again when the interval is over (None: the re-checks end here)."""
    if last_push_at is None:
        return None
    over = last_push_at + timing.gmail_push_interval
    return over if listed_at < over else None


def audit_due(last_audit_at: dt.datetime | None, now: dt.datetime, timing: SyncTiming) -> bool:
    return last_audit_at is None or now - last_audit_at >= timing.audit_interval
