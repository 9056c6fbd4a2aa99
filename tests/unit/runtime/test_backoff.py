"""The doubling backoff that the consumers, the dependency waits, the Gmail retries, the sync passes and the
attachment collector share."""

from __future__ import annotations

import datetime as dt

import pytest

from services.runtime.backoff import doubling_delay


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (40, 300.0)],
)
def test_the_delay_doubles_from_the_first_failure_up_to_the_ceiling(failures: int, expected: float) -> None:
    assert doubling_delay(5.0, 300.0, failures) == expected


def test_delays_as_durations_double_the_same_way() -> None:
    second = dt.timedelta(seconds=1)
    assert [doubling_delay(second, 10 * second, n) for n in range(1, 6)] == [
        second,
        2 * second,
        4 * second,
        8 * second,
        10 * second,
    ]
