"""The pure rolling-quota rules (R14): admission, the time sending is possible again, GetQuota, Gmail's block."""

from __future__ import annotations

import datetime as dt

import pytest

from services.outbound.domain.errors import QuotaCause, QuotaExceeded
from services.outbound.domain.quota import (
    AccountType,
    DailyLimit,
    DailyLimits,
    LimitSource,
    check_admission,
    daily_limit_of,
    gmail_block_end,
    quota_status,
    sends_that_must_leave,
)

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("daily_limit", "used", "expected"),
    [(500, 0, 0), (500, 499, 0), (500, 500, 1), (500, 501, 2), (2, 4, 3), (1, 0, 0)],
)
def test_R14_sends_that_must_leave_before_one_more_fits(daily_limit: int, used: int, expected: int) -> None:
    assert sends_that_must_leave(daily_limit=daily_limit, used=used) == expected


def test_R14_a_send_that_fits_is_admitted() -> None:
    check_admission(
        mailbox_id="m", daily_limit=500, used=499, blocking_send_time=None, blocked_until=None, now=NOW
    )


def test_R14_a_full_window_refuses_until_the_blocking_send_is_24_hours_old() -> None:
    with pytest.raises(QuotaExceeded) as refused:
        check_admission(
            mailbox_id="m",
            daily_limit=500,
            used=500,
            blocking_send_time=NOW - 5 * HOUR,
            blocked_until=None,
            now=NOW,
        )
    assert refused.value.retry_time == NOW + 19 * HOUR
    assert refused.value.cause is QuotaCause.ROLLING_LIMIT
    assert refused.value.metadata["retry_time"] == (NOW + 19 * HOUR).isoformat()


@pytest.mark.parametrize(
    ("blocked_until", "used", "refused_until"),
    [
        (NOW + 3 * HOUR, 0, NOW + 3 * HOUR),
        (NOW + 3 * HOUR, 499, NOW + 3 * HOUR),
        (NOW - HOUR, 0, None),
        (NOW, 0, None),
    ],
)
def test_R14_gmails_block_refuses_until_its_end(
    blocked_until: dt.datetime, used: int, refused_until: dt.datetime | None
) -> None:
    arguments = {"mailbox_id": "m", "daily_limit": 500, "used": used, "blocking_send_time": None, "now": NOW}
    if refused_until is None:
        check_admission(blocked_until=blocked_until, **arguments)  # type: ignore[arg-type]
        return
    with pytest.raises(QuotaExceeded) as refused:
        check_admission(blocked_until=blocked_until, **arguments)  # type: ignore[arg-type]
    assert refused.value.retry_time == refused_until
    assert refused.value.cause is QuotaCause.GMAIL_BLOCK


@pytest.mark.parametrize(
    ("used", "oldest", "blocked_until", "expected"),
    [
        (0, None, None, (0, 500, None, None)),
        (10, NOW - 2 * HOUR, None, (10, 490, NOW + 22 * HOUR, None)),
        (500, NOW - 2 * HOUR, None, (500, 0, NOW + 22 * HOUR, None)),
        (510, NOW - 2 * HOUR, None, (510, 0, NOW + 22 * HOUR, None)),
        (10, NOW - 2 * HOUR, NOW + HOUR, (10, 0, NOW + HOUR, NOW + HOUR)),
        (500, NOW - 2 * HOUR, NOW + HOUR, (500, 0, NOW + 22 * HOUR, NOW + HOUR)),
        (0, None, NOW + HOUR, (0, 0, NOW + HOUR, NOW + HOUR)),
        (10, NOW - 2 * HOUR, NOW - HOUR, (10, 490, NOW + 22 * HOUR, None)),
    ],
)
def test_get_quota_reports_used_remaining_reset_and_block(
    used: int,
    oldest: dt.datetime | None,
    blocked_until: dt.datetime | None,
    expected: tuple[object, ...],
) -> None:
    status = quota_status(
        daily_limit=500, used=used, oldest_send_time=oldest, blocked_until=blocked_until, now=NOW
    )
    assert (status.used, status.remaining, status.reset_time, status.blocked_until) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "User-rate limit exceeded.  Retry after 2026-07-16T00:34:55.867Z (Mail sending)",
            dt.datetime(2026, 7, 16, 0, 34, 55, 867000, tzinfo=dt.UTC),
        ),
        (
            "User-rate limit exceeded. Retry after 2026-11-27T08:00:00Z (Mail sending)",
            dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC),
        ),
        ("User-rate limit exceeded (Mail sending)", NOW + HOUR),
        ("", NOW + HOUR),
    ],
)
def test_R14_gmails_sending_limit_answer_names_the_block_end(message: str, expected: dt.datetime) -> None:
    assert gmail_block_end(message, NOW) == expected


@pytest.mark.parametrize(
    ("explicit", "account_type", "expected"),
    [
        (None, AccountType.WORKSPACE, DailyLimit(2000, LimitSource.WORKSPACE_ACCOUNT)),
        (None, AccountType.CONSUMER, DailyLimit(500, LimitSource.CONSUMER_ACCOUNT)),
        # Google did not say: the lower limit, never the Workspace one.
        (None, AccountType.UNKNOWN, DailyLimit(500, LimitSource.UNKNOWN_ACCOUNT)),
        (50, AccountType.WORKSPACE, DailyLimit(50, LimitSource.SET_EXPLICITLY)),
        (3000, AccountType.CONSUMER, DailyLimit(3000, LimitSource.SET_EXPLICITLY)),
    ],
)
def test_R14_the_daily_limit_is_the_set_one_else_the_account_types(
    explicit: int | None, account_type: AccountType, expected: DailyLimit
) -> None:
    assert daily_limit_of(explicit, account_type, DailyLimits(consumer=500, workspace=2000)) == expected


def test_R14_a_refusal_names_the_gmail_address_and_why() -> None:
    with pytest.raises(QuotaExceeded) as refused:
        check_admission(
            mailbox_id="mb-1",
            mailbox_email="alice@gmail.test",
            daily_limit=500,
            used=500,
            blocking_send_time=NOW - HOUR,
            blocked_until=None,
            now=NOW,
        )
    assert refused.value.message.startswith("alice@gmail.test may not send until ")
    assert "500 sends of the last 24 hours" in refused.value.message
    assert refused.value.metadata["mailbox_id"] == "mb-1"
