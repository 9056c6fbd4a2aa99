"""Memory stays flat over 1,000 hostile mails: nothing a message names (300 never-seen charset labels each,
floods, nesting, broken multiparts) is remembered by the process. Measured in a fresh subprocess (RSS after a
warm-up against RSS at the end, with a generous margin); no timing involved."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A thousand hostile mails are minutes of CPU on a loaded machine (two test runs at once ran out of the suite's
# 180 s): the bound is a hang bound, not a speed claim.
pytestmark = pytest.mark.timeout(900)

# RSS may move by allocator noise; the leak this guards against grew by tens of MB over the same run.
MARGIN_BYTES = 8 * 1024 * 1024


def rss_in_subprocess(count: int, warm_up: int, *, stdlib_lookups: bool = False) -> dict[str, int]:
    program = (
        "import json; from tests.fixtures.mime_samples import rss_over_hostile_mails; "
        f"print(json.dumps(rss_over_hostile_mails({count}, {warm_up}, stdlib_lookups={stdlib_lookups})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=1800, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_rss_stays_flat_over_a_thousand_hostile_mails() -> None:
    measured = rss_in_subprocess(1000, 100)

    assert measured["at_end"] - measured["after_warm_up"] <= MARGIN_BYTES, measured


def test_negative_control_remembering_every_charset_name_is_caught_by_the_same_measure() -> None:
    # The normalizer's old behaviour, asked of the codec registry directly: each name stays cached forever.
    measured = rss_in_subprocess(150, 30, stdlib_lookups=True)

    assert measured["at_end"] - measured["after_warm_up"] > MARGIN_BYTES, measured
