"""The chaos tier (`make chaos` runs the full profile; `make test-chaos` runs this reduced one): the real processes as
`make run` starts them, each case under load with kill -9 of services and nats-server at seeded random moments
or with Gmail faults, checked by Gmail id, Message-ID and token, and each case's negative control (a second copy
injected through the sandbox) caught by the same checker. The services run on PostgreSQL when
MAILSYNC_TEST_POSTGRES_URL is set, on SQLite otherwise. MAILSYNC_CHAOS_SEED replays a run; the seed is in every
failure message and in the printed table.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.fixtures.databases import postgres_url
from tools.chaos import CASES, PROFILES, CaseResult, Chaos, chaos_stack
from tools.chaos_check import table

SEED_VARIABLE = "MAILSYNC_CHAOS_SEED"
CASE_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(1 << 31))
    # PostgreSQL (the production database) when the test run has one, as CI does; SQLite files otherwise.
    with chaos_stack(tmp_path_factory.mktemp("chaos"), postgres_url()) as stack:
        yield Chaos(stack, PROFILES["ci"], seed)


@pytest.mark.slow
@pytest.mark.timeout(CASE_TIMEOUT_SECONDS)
@pytest.mark.parametrize("case", CASES)
def test_chaos_case_loses_and_duplicates_nothing_and_its_control_is_caught(chaos: Chaos, case: str) -> None:
    result: CaseResult = chaos.run(case)
    print(f"seed {chaos.seed}\n{table([result.verdict, result.control])}")
    context = f"{SEED_VARIABLE}={chaos.seed}\n{table([result.verdict, result.control])}"
    assert result.verdict.ok, f"{case}: {result.verdict.problems}\n{context}\n{chaos.stack.logs(60)}"
    assert result.control.duplicated >= 1 and not result.control.ok, (
        f"{case}: the checker did not catch the injected duplicate\n{context}"
    )
