"""The Gmail adapter against the Gmail sandbox: real HTTP, the unmodified Google client underneath, faults injected
through the sandbox's admin API (docs/sandbox.md)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import random
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sandbox.grants import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from services.runtime.clock import SystemClock
from services.runtime.gmail import (
    AccessTokenRejected,
    GmailApi,
    GmailClient,
    GmailEndpoint,
    HistoryExpired,
    OAuthClient,
    PermanentAuthFailure,
    RetryableGmailError,
    RetryPolicy,
    RetryTiming,
    SendingLimitReached,
    SendOutcomeUnknown,
    decode_base64url,
    fixed_access_token,
    refresh_access_token,
)
from tests.fixtures.sandbox import GmailSandbox, PushReceiver

ALICE = "alice@example.com"
BOB = "bob@example.com"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"


class RecordedSleeps:
    """Stands in for asyncio.sleep: records each backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def world(gmail_sandbox: GmailSandbox) -> GmailSandbox:
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.create_mailbox(BOB)
    return gmail_sandbox


@pytest.fixture
def api(world: GmailSandbox) -> Iterator[GmailApi]:
    gmail_api = GmailApi(GmailEndpoint(root_url=world.url, max_workers=4, media_upload_threshold=4096))
    yield gmail_api
    gmail_api.close()


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


def client_for(
    api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps, address: str = ALICE, attempts: int = 5
) -> GmailClient:
    token = world.tokens(address, [GMAIL_MODIFY])["access_token"]
    timing = RetryTiming(clock=SystemClock(), rng=random.Random(5), sleep=sleeps)
    return GmailClient(
        api, fixed_access_token(token), policy=RetryPolicy(max_attempts=attempts), timing=timing
    )


@pytest.fixture
async def alice(api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps) -> AsyncIterator[GmailClient]:
    yield client_for(api, world, sleeps)


def message_bytes(subject: str, body: str = "hello", to: str = BOB, message_id: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = ALICE
    message["To"] = to
    message["Subject"] = subject
    if message_id:
        message["Message-ID"] = message_id
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def method_calls(world: GmailSandbox, address: str, method: str) -> int:
    report = world.admin.quota()
    return int(report["users"].get(address, {}).get("methods", {}).get(method, {}).get("calls", 0))


def injected(world: GmailSandbox, reason: str) -> int:
    return int(world.admin.request("GET", "/admin/faults")["injected"].get(reason, 0))


async def test_profile_reads_the_mailbox_address_and_history_id(alice: GmailClient) -> None:
    profile = await alice.get_profile()
    assert profile.email_address == ALICE
    assert int(profile.history_id) > 0


async def test_injected_429_and_500_are_retried_with_backoff(
    alice: GmailClient, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    world.admin.set_faults("gmail.users.getProfile", next_errors=["rateLimitExceeded", "backendError"])
    profile = await alice.get_profile()
    assert profile.email_address == ALICE
    assert injected(world, "rateLimitExceeded") == 1 and injected(world, "backendError") == 1
    assert len(sleeps.delays) == 2
    assert 1.0 <= sleeps.delays[0] <= 1.5 and 2.0 <= sleeps.delays[1] <= 3.0


async def test_each_call_is_a_client_span_with_its_attempts(
    api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    token = world.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
    client = GmailClient(
        api, fixed_access_token(token), timing=RetryTiming(sleep=sleeps), tracer_provider=provider
    )
    world.admin.set_faults("gmail.users.getProfile", next_errors=["backendError"])
    await client.get_profile()
    with pytest.raises(HistoryExpired):
        world.admin.expire_history(ALICE, 10**9)
        await client.list_history("1")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["Gmail users.getProfile"].attributes["gmail.attempts"] == 2
    assert spans["Gmail users.getProfile"].kind is SpanKind.CLIENT
    assert spans["Gmail users.history.list"].attributes["gmail.error"] == "GmailNotFound"
    assert not spans["Gmail users.history.list"].status.is_ok


async def test_retries_are_bounded(api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps) -> None:
    # Negative control for the test above: with fewer attempts than injected errors the error reaches the caller.
    client = client_for(api, world, sleeps, attempts=2)
    world.admin.set_faults(
        "gmail.users.getProfile", next_errors=["rateLimitExceeded", "userRateLimitExceeded"]
    )
    with pytest.raises(RetryableGmailError) as raised:
        await client.get_profile()
    assert raised.value.status == 403 and raised.value.reason == "userRateLimitExceeded"
    assert len(sleeps.delays) == 1


async def test_batched_gets_fetch_every_message_in_chunks_of_at_most_25(
    alice: GmailClient, world: GmailSandbox
) -> None:
    for n in range(110):
        world.admin.deliver(
            ALICE, sender="carol@outside.example", to=ALICE, subject=f"note {n}", body=f"body {n}"
        )
    stubs = await alice.list_messages(label_ids=["INBOX"], page_size=40)
    assert len(stubs) == 110
    # 110 ids would be refused by Gmail in one batch (more than 100 parts): chunking is what makes this work.
    batch = await alice.get_messages_raw([stub["id"] for stub in stubs])
    assert not batch.failed and not batch.not_found
    subjects = {
        email.message_from_bytes(decode_base64url(m["raw"]))["Subject"] for m in batch.messages.values()
    }
    assert subjects == {f"note {n}" for n in range(110)}
    assert method_calls(world, ALICE, "gmail.users.messages.get") == 110


async def test_batches_never_exceed_25_parts_even_if_configured_larger(world: GmailSandbox) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = GmailApi(GmailEndpoint(root_url=world.url, batch_size=100))
    try:
        token = world.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
        client = GmailClient(api, fixed_access_token(token), tracer_provider=provider)
        ids = [
            world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject=f"b{n}", body="x")[
                "id"
            ]
            for n in range(60)
        ]
        batch = await client.get_messages(ids, format="minimal")
    finally:
        api.close()
    assert len(batch.messages) == 60
    sizes = [
        s.attributes["gmail.batch_size"]
        for s in exporter.get_finished_spans()
        if s.name.startswith("Gmail batch")
    ]
    assert sizes == [25, 25, 10]


async def test_a_grant_without_read_scope_fails_the_whole_batch(api: GmailApi, world: GmailSandbox) -> None:
    token = world.tokens(ALICE, ["https://www.googleapis.com/auth/gmail.send"])["access_token"]
    kept = world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject="k", body="x")["id"]
    with pytest.raises(PermanentAuthFailure) as raised:
        await GmailClient(api, fixed_access_token(token)).get_messages([kept], format="minimal")
    assert raised.value.reason == "insufficientPermissions"


async def test_a_batch_retries_only_its_failed_items(
    alice: GmailClient, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    delivered = [
        world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject=f"s{n}", body="x")["id"]
        for n in range(30)
    ]
    world.admin.set_faults(
        "gmail.users.messages.get", next_errors=["tooManyConcurrent", "rateLimitExceeded", "backendError"]
    )
    batch = await alice.get_messages(delivered, format="minimal")
    assert set(batch.messages) == set(delivered) and not batch.failed
    assert len(sleeps.delays) == 1
    # Each message was answered successfully exactly once: the 27 that succeeded first were not fetched again.
    assert method_calls(world, ALICE, "gmail.users.messages.get") == 30


async def test_deleted_messages_are_reported_as_not_found(alice: GmailClient, world: GmailSandbox) -> None:
    kept = world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject="kept", body="x")[
        "id"
    ]
    batch = await alice.get_messages([kept, "0000deadbeef0000"], format="minimal")
    assert set(batch.messages) == {kept}
    assert batch.not_found == {"0000deadbeef0000"}


async def test_a_send_is_never_retried_blindly(
    alice: GmailClient, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    world.admin.set_faults("gmail.users.messages.send", next_errors=["backendError", "backendError"])
    with pytest.raises(SendOutcomeUnknown):
        await alice.send_raw(message_bytes("once"))
    assert injected(world, "backendError") == 1
    assert sleeps.delays == []
    # Negative control: the same scripted failures on a read are retried through.
    world.admin.clear_faults()
    world.admin.set_faults("gmail.users.getProfile", next_errors=["backendError", "backendError"])
    await alice.get_profile()
    assert injected(world, "backendError") == 2


async def test_a_rate_limited_send_is_refused_not_retried(alice: GmailClient, world: GmailSandbox) -> None:
    world.admin.set_faults("gmail.users.messages.send", next_errors=["rateLimitExceeded"])
    with pytest.raises(RetryableGmailError) as raised:
        await alice.send_raw(message_bytes("later"))
    assert not isinstance(raised.value, SendOutcomeUnknown) and raised.value.status == 429
    assert world.admin.outbox() == [] and await alice.list_messages(label_ids=["SENT"]) == []


async def test_the_daily_sending_limit_is_its_own_error_with_gmails_retry_time(
    api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    world.create_mailbox("limited@example.com", daily_send_limit=1)
    client = client_for(api, world, sleeps, address="limited@example.com")
    await client.send_raw(message_bytes("first"))
    with pytest.raises(SendingLimitReached) as raised:
        await client.send_raw(message_bytes("second"))
    assert raised.value.retry_at is not None
    assert raised.value.retry_at > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    assert sleeps.delays == []
    delivered = world.gmail(BOB).users().messages().list(userId="me").execute().get("messages", [])
    assert len(delivered) == 1


async def test_send_json_and_media_paths_deliver_and_are_found_by_message_id(
    alice: GmailClient, world: GmailSandbox
) -> None:
    small = await alice.send_raw(message_bytes("small", message_id="<small-1@crm.example>"))
    large = await alice.send_raw(
        message_bytes("large", body="y" * 20_000, message_id="<large-1@crm.example>")
    )
    assert "SENT" in small["labelIds"] and "SENT" in large["labelIds"]
    bob_inbox = [m["id"] for m in world.gmail(BOB).users().messages().list(userId="me").execute()["messages"]]
    assert len(bob_inbox) == 2
    sent_large = await alice.get_message(large["id"], format="raw")
    parsed = email.message_from_bytes(decode_base64url(sent_large["raw"]), policy=email.policy.default)
    assert parsed.get_content().strip() == "y" * 20_000  # type: ignore[attr-defined]
    header = await alice.get_message(small["id"], format="metadata", metadata_headers=["Message-ID"])
    gmail_message_id = header["payload"]["headers"][0]["value"]
    assert [m["id"] for m in await alice.find_by_rfc822_message_id(gmail_message_id)] == [small["id"]]


async def test_history_is_listed_across_pages_and_expiry_is_its_own_error(
    alice: GmailClient, world: GmailSandbox
) -> None:
    start = (await alice.get_profile()).history_id
    for n in range(7):
        world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject=f"h{n}", body="x")
    listing = await alice.list_history(start, history_types=["messageAdded"], page_size=2)
    added = [m["message"]["id"] for record in listing.records for m in record.get("messagesAdded", [])]
    assert len(added) == 7
    assert int(listing.history_id) > int(start)
    world.admin.expire_history(ALICE, int(listing.history_id))
    with pytest.raises(HistoryExpired):
        await alice.list_history(start)


async def test_watch_and_stop(alice: GmailClient, world: GmailSandbox, push_receiver: PushReceiver) -> None:
    topic = "projects/sandbox-project/topics/gmail"
    world.admin.set_topic(topic, push_endpoint=push_receiver.url)
    started = await alice.watch(topic, label_ids=["INBOX"])
    assert started.expiration > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
    assert int(started.history_id) > 0
    assert ALICE in world.admin.push_report()["watches"]
    await alice.stop()
    assert ALICE not in world.admin.push_report()["watches"]


async def test_a_rejected_access_token_is_fetched_again_once(
    api: GmailApi, world: GmailSandbox, sleeps: RecordedSleeps
) -> None:
    good = world.tokens(ALICE, [GMAIL_MODIFY])["access_token"]
    handed_out: list[str] = []

    async def source() -> str:
        handed_out.append("ya29.stale" if not handed_out else good)
        return handed_out[-1]

    client = GmailClient(api, source, timing=RetryTiming(sleep=sleeps))
    assert (await client.get_profile()).email_address == ALICE
    assert handed_out == ["ya29.stale", good]
    kept = world.admin.deliver(ALICE, sender="carol@outside.example", to=ALICE, subject="k", body="x")["id"]
    handed_out.clear()
    batch = await GmailClient(api, source, timing=RetryTiming(sleep=sleeps)).get_messages(
        [kept], format="minimal"
    )
    assert set(batch.messages) == {kept} and handed_out == ["ya29.stale", good]
    stuck = GmailClient(api, fixed_access_token("ya29.stale"), timing=RetryTiming(sleep=sleeps))
    with pytest.raises(AccessTokenRejected):
        await stuck.get_profile()


async def test_refresh_works_until_the_password_changes(api: GmailApi, world: GmailSandbox) -> None:
    tokens = world.tokens(ALICE, [GMAIL_MODIFY])
    client = OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, token_uri=world.url + "/token")
    now = dt.datetime.now(dt.UTC)
    fresh = await refresh_access_token(api, client, tokens["refresh_token"], now=now)
    assert fresh.access_token and fresh.expiry is not None and fresh.expiry > now
    assert fresh.access_token not in repr(fresh)
    world.admin.change_password(ALICE, "new-password")
    with pytest.raises(PermanentAuthFailure) as raised:
        await refresh_access_token(api, client, tokens["refresh_token"], now=now)
    assert raised.value.reason == "invalid_grant"
