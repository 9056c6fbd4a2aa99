"""When a mailbox is looked at again: re-checks, the safety poll, backoff to FAILED, audits; and R1's scope."""

from __future__ import annotations

import datetime as dt

import pytest

from services.ingest.mailboxes import ConnectionInfo, MailboxInfo, sync_scope
from services.ingest.sync_policy import (
    CheckReason,
    SyncState,
    SyncTiming,
    audit_due,
    look_again_at,
    next_check_after_success,
    plan_after_failure,
)

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TIMING = SyncTiming(
    recheck_delay=dt.timedelta(seconds=5),
    safety_poll_interval=dt.timedelta(minutes=10),
    backoff_base=dt.timedelta(seconds=30),
    backoff_max=dt.timedelta(minutes=5),
    failures_before_failed=4,
    failed_retry=dt.timedelta(hours=1),
    audit_interval=dt.timedelta(hours=6),
)


@pytest.mark.parametrize(
    ("failures", "state", "delay"),
    [
        (1, SyncState.BACKING_OFF, dt.timedelta(seconds=30)),
        (2, SyncState.BACKING_OFF, dt.timedelta(seconds=60)),
        (3, SyncState.BACKING_OFF, dt.timedelta(seconds=120)),
        (4, SyncState.FAILED, dt.timedelta(hours=1)),
        (9, SyncState.FAILED, dt.timedelta(hours=1)),
    ],
)
def test_failures_back_off_doubling_then_fail_with_a_slow_retry(
    failures: int, state: SyncState, delay: dt.timedelta
) -> None:
    plan = plan_after_failure(failures, NOW, TIMING)
    assert (plan.state, plan.retry_at) == (state, NOW + delay)


def test_backoff_never_exceeds_its_ceiling() -> None:
    timing = SyncTiming(
        backoff_base=dt.timedelta(seconds=30), backoff_max=dt.timedelta(seconds=90), failures_before_failed=99
    )
    assert plan_after_failure(10, NOW, timing).retry_at == NOW + dt.timedelta(seconds=90)


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


# TIMING: re-checks 5 s after work, Gmail's push interval 1 s (the default), the safety poll 10 min.
@pytest.mark.parametrize(
    ("case", "had_work", "last_push", "listed", "due", "reason"),
    [
        ("work, no push known", True, None, 0, seconds(5), CheckReason.RECHECK),
        ("work, a push a moment ago", True, -0.2, 0, seconds(5), CheckReason.RECHECK),
        ("nothing, no push known", False, None, 0, dt.timedelta(minutes=10), CheckReason.POLL),
        ("nothing, listed after the last push's interval", False, -1.5, -0.1, seconds(600), CheckReason.POLL),
        (
            "nothing, listed within the last push's interval",
            False,
            -0.4,
            -0.1,
            seconds(0.6),
            CheckReason.RECHECK,
        ),
        ("nothing, listed exactly when the interval ended", False, -1.0, 0, seconds(600), CheckReason.POLL),
    ],
)
def test_after_a_pass_the_next_check_comes_soon_after_work_and_after_the_last_push_interval_after_none(
    case: str, had_work: bool, last_push: float | None, listed: float, due: dt.timedelta, reason: str
) -> None:
    answer = next_check_after_success(
        had_work,
        NOW,
        TIMING,
        last_push_at=None if last_push is None else NOW + seconds(last_push),
        listed_at=NOW + seconds(listed),
    )
    assert answer == (NOW + due, reason), case


@pytest.mark.parametrize(
    ("last_push", "listed", "again"),
    [(None, 0, None), (-0.3, 0, 0.7), (-1.0, 0, None), (-2.0, 0, None), (-0.3, 0.8, None)],
)
def test_a_recheck_that_found_nothing_looks_again_only_if_it_listed_within_the_last_push_interval(
    last_push: float | None, listed: float, again: float | None
) -> None:
    answer = look_again_at(
        None if last_push is None else NOW + seconds(last_push), NOW + seconds(listed), TIMING
    )
    assert answer == (None if again is None else NOW + seconds(again))


def test_audit_is_due_when_never_run_or_older_than_its_interval() -> None:
    assert audit_due(None, NOW, TIMING)
    assert audit_due(NOW - dt.timedelta(hours=6), NOW, TIMING)
    assert not audit_due(NOW - dt.timedelta(hours=5), NOW, TIMING)


def connection(state: str, start_history_id: int, minutes: int, location: str = "loc") -> ConnectionInfo:
    return ConnectionInfo(
        connection_id=f"c-{location}-{start_history_id}",
        user_id="u",
        location_id=location,
        state=state,
        start_history_id=start_history_id,
        start_time=NOW + dt.timedelta(minutes=minutes),
    )


def test_R1_scope_is_the_earliest_start_among_connected_connections_only() -> None:
    connections = (
        connection("DISCONNECTED", 10, 0, "a"),
        connection("CONNECTED", 50, 5, "b"),
        connection("CONNECTED", 30, 9, "c"),
        connection("REAUTH_REQUIRED", 20, 1, "d"),
    )
    assert sync_scope(connections) == (30, NOW + dt.timedelta(minutes=5))


def test_R11_R12_no_connected_connection_means_no_scope_and_reauth_is_told_apart() -> None:
    paused = MailboxInfo("m", "a@x", (connection("REAUTH_REQUIRED", 1, 0), connection("REPLACED", 2, 0)))
    stopped = MailboxInfo("m", "a@x", (connection("DISCONNECTED", 1, 0), connection("REPLACED", 2, 0)))
    assert sync_scope(paused.connections) is None and paused.awaiting_reauth
    assert sync_scope(stopped.connections) is None and not stopped.awaiting_reauth
    assert paused.connected_in("loc") and not stopped.connected_in("loc")


def test_the_first_fetch_batch_is_sized_by_the_last_passs_largest_message() -> None:
    from services.ingest.sync import BATCH_CHARS, FIRST_BATCH, FIRST_BATCH_MAX, first_batch_size

    assert first_batch_size(0) == FIRST_BATCH, "sizes unknown: two at a time"
    assert first_batch_size(4_000) == FIRST_BATCH_MAX == 4, "ordinary mail: capped at 4"
    assert first_batch_size(BATCH_CHARS // 3) == 3
    assert first_batch_size(14 * 1024 * 1024) == 1, "a 10 MB mail (base64url): one at a time"
    assert first_batch_size(BATCH_CHARS * 4) == 1
