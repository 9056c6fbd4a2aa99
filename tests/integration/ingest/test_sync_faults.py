"""The sync worker when things go wrong: history gaps (R1), rate limits and 5xx, two workers on the same
mailboxes, a dead grant (R12), and a message missing behind ingest's back (the audit)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import delete, update

from mailsync.v1 import events_pb2
from services.ingest import store
from services.ingest.connection_events import ConnectionEventHandler
from services.ingest.connection_proto import connections_to_proto
from services.ingest.mailboxes import MailboxInfo
from services.ingest.sync import MailboxSyncer, PassOutcome
from services.ingest.work import queue_sync
from services.runtime import streams, subjects
from services.runtime.consumer import Delivery
from services.runtime.gmail import RetryableGmailError, RetryPolicy
from services.runtime.jetstream import publish
from tests.fixtures.ingest_world import IngestWorld
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"


async def sync_row(world: IngestWorld, mailbox_id: str) -> store.SyncRow:
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox_id)
    assert row is not None
    return row


def connection_event(
    event_id: str, kind: events_pb2.ConnectionEventKind.ValueType, mailbox: MailboxInfo
) -> events_pb2.ConnectionEvent:
    """Auth's connection event of `kind` with the mailbox's connections as they are after it."""
    return events_pb2.ConnectionEvent(
        event_id=event_id,
        kind=kind,
        mailbox_id=mailbox.mailbox_id,
        mailbox_email=mailbox.email,
        mailbox_connections=connections_to_proto(mailbox.connections),
    )


async def wait_published(world: IngestWorld, gmail_ids: list[str], within: float = 30) -> None:
    async def published() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(gmail_ids)

    await eventually(published, within=within)


async def queue(world: IngestWorld, mailbox_id: str, key: str, reason: str = "PUSH") -> None:
    await queue_sync(
        world.js,
        mailbox_id,
        "",
        reason=reason,
        msg_id=f"test:{mailbox_id}:{key}",
        now=dt.datetime.now(dt.UTC),
    )


async def test_R1_history_gap_resyncs_nothing_before_the_connection_and_loses_nothing(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    before = world.deliver(ALICE, copies=2, subject="before the connection")
    await asyncio.sleep(0.01)
    mailbox = world.connect(ALICE)
    first = world.deliver(ALICE, copies=3)
    syncer = world.syncer()
    await syncer.sync(mailbox.mailbox_id)
    missed = world.deliver(ALICE, copies=4, subject="during the gap")
    world.sandbox.admin.expire_history(ALICE, before=int(world.sandbox.admin.mailbox(ALICE)["historyId"]) + 1)
    late = world.deliver(ALICE, copies=1, subject="after the gap")

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    await wait_published(world, first + missed + late)
    published = world.recorder.recorded.normalized_ids()
    assert set(published) == set(first + missed + late) and set(published).isdisjoint(before)
    assert all(count == 1 for count in published.values())
    row = await sync_row(world, mailbox.mailbox_id)
    assert (row.resyncs, row.state, row.last_error, row.consecutive_failures) == (1, "IDLE", "", 0)
    # The new cursor came from getProfile before the listing: the next pass continues from it with history.
    extra = world.deliver(ALICE, copies=1)
    await syncer.sync(mailbox.mailbox_id)
    await wait_published(world, extra)
    assert (await sync_row(world, mailbox.mailbox_id)).resyncs == 1


async def test_injected_429_and_500_at_20_percent_still_publish_every_message_exactly_once(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    delivered = world.deliver(ALICE, copies=60)
    world.sandbox.admin.set_faults("*", rate_limit_share=0.1, backend_error_share=0.1)

    # Negative control: the faults do bite; without retries a pass fails and the mailbox backs off.
    fragile = world.syncer(owner="fragile", gmail_policy=RetryPolicy(max_attempts=1))
    outcomes = [await fragile.sync(mailbox.mailbox_id) for _ in range(3)]
    assert PassOutcome.FAILED in outcomes
    assert (await sync_row(world, mailbox.mailbox_id)).consecutive_failures >= 1

    world.start_workers(world.syncer(), count=2)
    world.start_scheduler()
    await queue(world, mailbox.mailbox_id, "go")
    await wait_published(world, delivered, within=60)
    world.sandbox.admin.clear_faults()

    assert world.counter.attempts == dict.fromkeys(delivered, 1)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)


class OverlapTracker:
    """Counts passes running at once per mailbox, across every syncer given to it."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def wrap(self, syncer: MailboxSyncer) -> MailboxSyncer:
        inner = syncer._leased_pass

        async def tracked(lease: Any, mailbox: Any, scope: Any, reason: str, **options: Any) -> PassOutcome:
            self.running[mailbox.mailbox_id] += 1
            self.most[mailbox.mailbox_id] = max(
                self.most[mailbox.mailbox_id], self.running[mailbox.mailbox_id]
            )
            try:
                return await inner(lease, mailbox, scope, reason, **options)
            finally:
                self.running[mailbox.mailbox_id] -= 1

        syncer._leased_pass = tracked  # type: ignore[method-assign]
        return syncer


async def run_two_workers(world: IngestWorld, tracker: OverlapTracker, lease_ttl: dt.timedelta) -> list[str]:
    addresses = [f"user{i}@example.com" for i in range(3)]
    mailboxes = []
    for address in addresses:
        world.sandbox.create_mailbox(address)
        mailboxes.append(world.connect(address))
    world.sandbox.admin.set_faults("gmail.users.messages.get", latency_ms=30)
    delivered: list[str] = []
    first = tracker.wrap(
        world.syncer(owner="process-a", lease_ttl=lease_ttl, min_push_interval=dt.timedelta(0))
    )
    second = tracker.wrap(
        world.syncer(owner="process-b", lease_ttl=lease_ttl, min_push_interval=dt.timedelta(0))
    )
    for _ in range(4):
        for address in addresses:
            delivered += world.deliver(address, copies=5)
        await asyncio.gather(
            *(s.sync(m.mailbox_id) for m in mailboxes for s in (first, second)), return_exceptions=True
        )
    world.sandbox.admin.clear_faults()
    return delivered


async def test_two_workers_never_process_one_mailbox_at_once(ingest_world: IngestWorld) -> None:
    tracker = OverlapTracker()
    delivered = await run_two_workers(ingest_world, tracker, lease_ttl=dt.timedelta(seconds=20))
    await wait_published(ingest_world, delivered)
    assert tracker.most and max(tracker.most.values()) == 1
    assert ingest_world.counter.attempts == dict.fromkeys(delivered, 1)


async def test_two_workers_overlap_when_the_lease_expires_at_once_negative_control(
    ingest_world: IngestWorld,
) -> None:
    tracker = OverlapTracker()
    await run_two_workers(ingest_world, tracker, lease_ttl=dt.timedelta(0))
    assert max(tracker.most.values()) == 2


async def test_passes_that_waited_together_for_the_write_lock_each_hold_the_lease_under_a_name_of_their_own(
    ingest_world: IngestWorld,
) -> None:
    """Two passes of one mailbox in one process wait behind another write transaction (SQLite's one writer). A
    holder may take back its own lease, so each pass needs a name of its own: with one name between them, the second
    took the lease over from the first, which lost it mid-pass (seen in the end-to-end benchmark's warm-up, about
    one mailbox of 100 per run)."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    delivered = world.deliver(ALICE, copies=2)
    named_before = syncer._passes

    async with world.db.write() as session:
        await session.execute(update(store.MailboxSyncRow).values(messages_skipped=0))
        passes = [asyncio.create_task(syncer.sync(mailbox.mailbox_id, "POLL")) for _ in range(2)]

        async def both_named() -> bool:
            return syncer._passes == named_before + 2

        # Both passes have counted themselves and wait for the write lock this transaction holds (on PostgreSQL
        # they need not wait: the assertions below hold either way).
        await eventually(both_named, within=60)
    outcomes = await asyncio.gather(*passes)

    assert PassOutcome.LEASE_LOST not in outcomes
    assert PassOutcome.SYNCED in outcomes
    await wait_published(world, delivered)
    row = await sync_row(world, mailbox.mailbox_id)
    assert row.lease_owner is None and row.state == "IDLE"


async def test_R12_invalid_grant_pauses_the_mailbox_and_reauthorized_resumes_with_no_gap(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.tokens.cache_seconds = 0
    world.sandbox.create_mailbox(ALICE, password="old")
    mailbox = world.connect(ALICE)
    early = world.deliver(ALICE, copies=2)
    syncer = world.syncer()
    await syncer.sync(mailbox.mailbox_id)
    world.sandbox.admin.change_password(ALICE, "new")
    during = world.deliver(ALICE, copies=3, subject="while paused")

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.PAUSED
    row = await sync_row(world, mailbox.mailbox_id)
    assert row.state == "PAUSED_REAUTH" and "invalid_grant" in row.last_error and row.next_attempt_at is None
    # Auth marks the connection; from then on pushes cost no Gmail call at all (no retry storm).
    paused = world.directory.set_state(mailbox.mailbox_id, "REAUTH_REQUIRED")
    calls_before = world.sandbox.admin.quota()["users"][ALICE]["total_units"]
    assert [await syncer.sync(mailbox.mailbox_id) for _ in range(3)] == [PassOutcome.PAUSED] * 3
    assert world.sandbox.admin.quota()["users"][ALICE]["total_units"] == calls_before
    assert paused.awaiting_reauth

    world.start_workers(syncer, count=1)
    world.start_connection_events()
    world.tokens.grant(mailbox.mailbox_id, ALICE)
    resumed = world.directory.set_state(mailbox.mailbox_id, "CONNECTED")
    event = connection_event("ev-1", events_pb2.CONNECTION_EVENT_KIND_REAUTHORIZED, resumed)
    await publish(world.js, subjects.connection("reauthorized", mailbox.mailbox_id), event, msg_id="ev-1")

    await wait_published(world, early + during)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(early + during, 1)

    async def idle() -> bool:
        return (await sync_row(world, mailbox.mailbox_id)).state == "IDLE"

    await eventually(idle, within=60)


async def test_R11_a_mailbox_without_a_connected_connection_stops_syncing(ingest_world: IngestWorld) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    await syncer.sync(mailbox.mailbox_id)
    world.directory.set_state(mailbox.mailbox_id, "DISCONNECTED")
    world.deliver(ALICE, copies=2)

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.STOPPED
    assert (await sync_row(world, mailbox.mailbox_id)).state == "STOPPED"
    assert world.recorder.recorded.normalized == []


async def test_R11_a_kept_answer_from_before_the_connection_does_not_stop_a_connected_mailbox(
    ingest_world: IngestWorld,
) -> None:
    """Ingest's cache of auth's answers drops a snapshot when its own subscription sees the connection event, and
    the consumer that resumes the mailbox sees the same event on its own: a pass may run in between. A stop is
    decided on auth's answer now, so a connected mailbox syncs (a first pass, which asks auth before listing)."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    delivered = world.deliver(ALICE, subject="after the connect")
    kept = replace(mailbox, connections=())
    current = world.directory.get_mailbox
    fresh_asks: list[str] = []

    async def cache_behind_the_event(**by: Any) -> Any:
        if not by.get("fresh"):
            return kept
        fresh_asks.append(by["mailbox_id"])
        return await current(**by)

    world.directory.get_mailbox = cache_behind_the_event  # type: ignore[method-assign]

    assert await world.syncer().sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    assert fresh_asks, "the kept answer was confirmed with auth"
    assert (await sync_row(world, mailbox.mailbox_id)).state == "IDLE"
    await wait_published(world, delivered)


async def test_R11_a_reconnect_while_a_pass_stops_the_mailbox_wins(ingest_world: IngestWorld) -> None:
    """Auth answers that the mailbox has no connection; before the pass writes its stop, the connection event of a
    reconnect resumes the mailbox. The pass's stop is fenced by the row's state version: it changes nothing, and
    the mailbox syncs."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    disconnected = world.directory.set_state(mailbox.mailbox_id, "DISCONNECTED")
    reconnect = connection_event("ev-reconnect", events_pb2.CONNECTION_EVENT_KIND_CONNECTED, mailbox)
    answered = world.directory.get_mailbox
    handler = ConnectionEventHandler(db=world.db, js=world.js)

    async def reconnected_once_auth_answered(**by: Any) -> Any:
        answer = await answered(**by)
        if by.get("fresh") and answer is disconnected:
            world.directory.mailboxes[mailbox.mailbox_id] = mailbox
            await handler.handle(
                Delivery(
                    "test", "CONNECTIONS", 1, "event", reconnect.SerializeToString(), {}, "ev-reconnect", 1
                )
            )
        return answer

    world.directory.get_mailbox = reconnected_once_auth_answered  # type: ignore[method-assign]
    delivered = world.deliver(ALICE, subject="after the reconnect")

    assert await world.syncer().sync(mailbox.mailbox_id) is PassOutcome.CHANGED
    row = await sync_row(world, mailbox.mailbox_id)
    assert row.state == "IDLE" and row.state_version == 1 and row.lease_owner is None

    # Negative control: the same answer with no event in between stops the mailbox.
    world.directory.get_mailbox = answered  # type: ignore[method-assign]
    assert await world.syncer().sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    await wait_published(world, delivered)
    world.directory.set_state(mailbox.mailbox_id, "DISCONNECTED")
    world.deliver(ALICE, subject="after the disconnect")
    assert await world.syncer().sync(mailbox.mailbox_id) is PassOutcome.STOPPED
    assert (await sync_row(world, mailbox.mailbox_id)).state == "STOPPED"


async def test_audit_finds_and_repairs_a_message_removed_behind_ingests_back(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    await world.recorder.stop()
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    delivered = world.deliver(ALICE, copies=3)
    syncer = world.syncer()
    await syncer.sync(mailbox.mailbox_id)
    lost = delivered[1]
    # Behind ingest's back: the event vanishes from the stream and the ledger forgets it was published.
    info = await world.js.stream_info(streams.MESSAGES.name)
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await world.js.get_msg(streams.MESSAGES.name, sequence)
        event = events_pb2.NormalizedMessage()
        event.ParseFromString(stored.data)
        if event.gmail_message_id == lost:
            await world.js.delete_msg(streams.MESSAGES.name, sequence)
    async with world.db.write() as session:
        await session.execute(
            delete(store.PublishedMessageRow).where(store.PublishedMessageRow.gmail_message_id == lost)
        )
    await world.recorder.start()
    await wait_published(world, [delivered[0], delivered[2]])

    # Negative control: an ordinary pass (audit not due) does not bring it back.
    await syncer.sync(mailbox.mailbox_id, "POLL")
    await asyncio.sleep(0.5)
    assert lost not in world.recorder.recorded.normalized_ids()

    async with world.db.write() as session:
        await session.execute(
            update(store.MailboxSyncRow)
            .where(store.MailboxSyncRow.mailbox_id == mailbox.mailbox_id)
            .values(last_audit_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        )
    await syncer.sync(mailbox.mailbox_id, "POLL")

    await wait_published(world, [lost])
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
    row = await sync_row(world, mailbox.mailbox_id)
    assert row.last_audit_missing == 1


@pytest.fixture(autouse=True)
def _no_faults_left(ingest_world: IngestWorld) -> Any:
    yield
    ingest_world.sandbox.admin.clear_faults()


async def test_R11_a_disconnected_mailbox_without_new_mail_is_stopped_by_its_connection_event(
    ingest_world: IngestWorld,
) -> None:
    """A pass that lists nothing asks auth nothing (its fixed cost, docs/ingest.md): a disconnect that Gmail has
    no mail for is acted on by the connection event, which stops the mailbox; after that no pass calls Gmail."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    disconnected = world.directory.set_state(mailbox.mailbox_id, "DISCONNECTED")
    asked = world.directory.get_mailbox
    calls: list[dict[str, str]] = []

    async def counting(**by: str) -> Any:
        calls.append(by)
        return await asked(**by)

    world.directory.get_mailbox = counting  # type: ignore[method-assign]

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    assert calls == [] and (await sync_row(world, mailbox.mailbox_id)).state == "IDLE"

    world.start_connection_events()
    event = connection_event("ev-disconnect", events_pb2.CONNECTION_EVENT_KIND_DISCONNECTED, disconnected)
    await publish(
        world.js, subjects.connection("disconnected", mailbox.mailbox_id), event, msg_id="ev-disconnect"
    )

    async def stopped() -> bool:
        return (await sync_row(world, mailbox.mailbox_id)).state == "STOPPED"

    await eventually(stopped, within=60)
    world.deliver(ALICE, copies=2)
    units = world.sandbox.admin.quota()["users"][ALICE]["total_units"]
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.STOPPED
    assert world.sandbox.admin.quota()["users"][ALICE]["total_units"] == units
    assert calls == [] and world.recorder.recorded.normalized == []


async def test_auth_down_after_the_listing_backs_the_pass_off_and_publishes_nothing(
    ingest_world: IngestWorld,
) -> None:
    """The mailbox's connections are read after Gmail's listing; without them nothing is published (R3): the pass
    fails like a Gmail failure (BACKING_OFF, cursor kept), and the next pass once auth answers publishes the mail."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    cursor = (await sync_row(world, mailbox.mailbox_id)).history_cursor
    delivered = world.deliver(ALICE, copies=2)
    asked = world.directory.get_mailbox

    async def auth_down(**_by: str) -> Any:
        raise RetryableGmailError("auth GetMailbox failed: UNAVAILABLE")

    world.directory.get_mailbox = auth_down  # type: ignore[method-assign]
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.FAILED
    row = await sync_row(world, mailbox.mailbox_id)
    assert row.state == "BACKING_OFF" and "UNAVAILABLE" in row.last_error and row.history_cursor == cursor
    assert row.lease_owner is None
    assert world.recorder.recorded.normalized == []

    world.directory.get_mailbox = asked  # type: ignore[method-assign]
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    await wait_published(world, delivered)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
