"""The adapter paces each user's Gmail requests to the user's quota: against the sandbox enforcing a per-user rate,
a burst of batched gets (and the history listings beside them) is never refused; without pacing the same burst
is (the negative control). Rates are scaled down from Google's (250 units/s legacy, 6,000/min in 2026) so a test
takes seconds; the rule is the same."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from services.runtime.gmail import (
    GmailApi,
    GmailClient,
    GmailEndpoint,
    QuotaBudget,
    RetryPolicy,
    fixed_access_token,
)
from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
MESSAGES = 120


@pytest.fixture
def burst(gmail_sandbox: GmailSandbox) -> Iterator[list[str]]:
    gmail_sandbox.create_mailbox(ALICE)
    answer = gmail_sandbox.admin.deliver(
        ALICE, sender="carol@outside.test", to=[ALICE], subject="burst", body="hello", copies=MESSAGES
    )
    yield answer["ids"]


def enforce(sandbox: GmailSandbox, table: str, units: int, window: float) -> None:
    sandbox.admin.settings(
        enforce_quota=True, quota_table=table, quota_units_per_window=units, quota_window_seconds=window
    )


def rejected(sandbox: GmailSandbox) -> int:
    return int(sandbox.admin.quota()["users"].get(ALICE, {}).get("rejected_calls", 0))


async def fetch_like_a_sync_pass(api: GmailApi, token: str, ids: list[str]) -> tuple[int, int]:
    """Two batches of 25 in flight at once, with a history listing beside them, as an ingest pass does; one
    attempt per request, so a refusal shows as a failed item instead of being retried away."""
    client = GmailClient(api, fixed_access_token(token), policy=RetryPolicy(max_attempts=1))
    limit = asyncio.Semaphore(2)
    fetched, failed = 0, 0

    async def fetch(chunk: list[str]) -> None:
        nonlocal fetched, failed
        async with limit:
            batch = await client.get_messages_raw(chunk)
        fetched += len(batch.messages)
        failed += len(batch.failed)

    profile = await client.get_profile()
    await asyncio.gather(
        *(fetch(ids[i : i + 25]) for i in range(0, len(ids), 25)),
        client.list_history(str(int(profile.history_id) - 1)),
    )
    return fetched, failed


@pytest.mark.parametrize(
    ("table", "units", "window"),
    [("legacy", 100, 0.5), ("2026", 400, 0.5)],
    ids=["legacy-table", "2026-table"],
)
async def test_a_paced_burst_is_never_refused(
    gmail_sandbox: GmailSandbox, burst: list[str], table: str, units: int, window: float
) -> None:
    enforce(gmail_sandbox, table, units, window)
    budget = QuotaBudget(table=table, units=units, window_seconds=window, margin_seconds=window / 100)
    api = GmailApi(GmailEndpoint(root_url=gmail_sandbox.url, max_workers=4, quota_pacing=budget))
    token = gmail_sandbox.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
    try:
        fetched, failed = await fetch_like_a_sync_pass(api, token, burst)
    finally:
        await api.aclose()
    assert (fetched, failed) == (MESSAGES, 0)
    assert rejected(gmail_sandbox) == 0
    # Every get was charged at the table's price: pacing did not fetch anything twice.
    methods = gmail_sandbox.admin.quota()["users"][ALICE]["methods"]
    assert methods["gmail.users.messages.get"]["calls"] == MESSAGES


async def test_without_pacing_the_same_burst_is_refused(
    gmail_sandbox: GmailSandbox, burst: list[str]
) -> None:
    """Negative control: the check above can fail."""
    enforce(gmail_sandbox, "legacy", 100, 0.5)
    api = GmailApi(GmailEndpoint(root_url=gmail_sandbox.url, max_workers=4))
    token = gmail_sandbox.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
    try:
        fetched, failed = await fetch_like_a_sync_pass(api, token, burst)
    finally:
        await api.aclose()
    assert failed > 0 and fetched + failed == MESSAGES
    assert rejected(gmail_sandbox) > 0


async def test_two_clients_of_one_user_share_the_budget(
    gmail_sandbox: GmailSandbox, burst: list[str]
) -> None:
    """Two passes of the same mailbox (two clients, one quota user) share one window: still nothing refused."""
    enforce(gmail_sandbox, "legacy", 100, 0.5)
    budget = QuotaBudget(table="legacy", units=100, window_seconds=0.5, margin_seconds=0.005)
    api = GmailApi(GmailEndpoint(root_url=gmail_sandbox.url, max_workers=4, quota_pacing=budget))
    token = gmail_sandbox.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
    try:
        outcomes = await asyncio.gather(
            fetch_like_a_sync_pass(api, token, burst[: MESSAGES // 2]),
            fetch_like_a_sync_pass(api, token, burst[MESSAGES // 2 :]),
        )
    finally:
        await api.aclose()
    assert [failed for _, failed in outcomes] == [0, 0]
    assert sum(fetched for fetched, _ in outcomes) == MESSAGES
    assert rejected(gmail_sandbox) == 0
