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
    had_work: bool, now: dt.datetime, timing: SyncTiming
) -> tuple[dt.datetime, CheckReason]:
    if had_work:
        return now + timing.recheck_delay, CheckReason.RECHECK
    return now + timing.safety_poll_interval, CheckReason.POLL


def audit_due(last_audit_at: dt.datetime | None, now: dt.datetime, timing: SyncTiming) -> bool:
    return last_audit_at is None or now - last_audit_at >= timing.audit_interval
