"""The sync pass against the Gmail sandbox and a real nats-server: R1 start points, spam/trash without content,
label changes and deletions (R17), the cursor, and the ledger."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from services.ingest import store
from services.ingest.sync import PassOutcome
from services.ingest.sync_policy import SyncState
from services.runtime.consumer import RetryLater
from tests.fixtures.ingest_world import IngestWorld, work_item_delivery
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"


async def test_R1_first_pass_publishes_only_messages_added_after_the_connection(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    before = world.deliver(ALICE, copies=2, subject="before")
    mailbox = world.connect(ALICE)
    after = world.deliver(ALICE, copies=3, subject="after")
    syncer = world.syncer()

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    async def all_recorded() -> bool:
        return len(world.recorder.recorded.normalized) >= 3

    await eventually(all_recorded, within=60)
    published = world.recorder.recorded.normalized_ids()
    assert set(published) == set(after) and set(published).isdisjoint(before)
    assert all(count == 1 for count in published.values())
    event = world.recorder.recorded.normalized[0]
    assert event.subject == "after" and event.mailbox_email == ALICE
    assert [c.location_id for c in event.connections] == ["loc-1"]
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.messages_published == 3 and row.state == "IDLE"
    assert row.history_cursor is not None and row.history_cursor >= int(
        world.sandbox.admin.mailbox(ALICE)["historyId"]
    )


async def test_R17_label_changes_and_deletions_of_published_messages_are_published(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    kept, trashed, deleted = world.deliver(ALICE, copies=3)
    syncer = world.syncer()
    await syncer.sync(mailbox.mailbox_id)
    gmail = world.gmail_for(ALICE)
    await gmail.modify_message(kept, remove_label_ids=["UNREAD"])
    await gmail.modify_message(trashed, add_label_ids=["TRASH"])
    service = world.sandbox.gmail(ALICE, ["https://mail.google.com/"])
    service.users().messages().delete(userId="me", id=deleted).execute()

    await syncer.sync(mailbox.mailbox_id)

    async def changes_recorded() -> bool:
        return len(world.recorder.recorded.changed) >= 3

    await eventually(changes_recorded, within=60)
    changes = {(c.gmail_message_id, c.kind): c for c in world.recorder.recorded.changed}
    assert list(changes[(kept, 1)].labels_removed) == ["UNREAD"]
    assert list(changes[(trashed, 1)].labels_added) == ["TRASH"]
    assert (deleted, 2) in changes
    assert world.recorder.recorded.normalized_ids() == {kept: 1, trashed: 1, deleted: 1}


async def test_R1_spam_and_trash_arrive_without_content_and_drafts_are_skipped(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    (spam,) = world.deliver(ALICE, label_ids=["SPAM"], subject="win money", body="secret body")
    (normal,) = world.deliver(ALICE, subject="hello", body="visible body")
    await world.syncer().sync(mailbox.mailbox_id)

    async def both_recorded() -> bool:
        return len(world.recorder.recorded.normalized) >= 2

    await eventually(both_recorded, within=60)
    events = {m.gmail_message_id: m for m in world.recorder.recorded.normalized}
    assert events[spam].subject == "" and events[spam].text_body == "" and "SPAM" in events[spam].label_ids
    assert events[spam].participants, "the explanation still needs the addresses (R16)"
    assert events[normal].subject == "hello" and "visible body" in events[normal].text_body


async def test_R3_a_location_connected_while_a_pass_runs_gets_the_mail_listed_after_its_connect(
    ingest_world: IngestWorld,
) -> None:
    """The pass reads the mailbox's locations when it begins; mail Gmail lists after a second location connected
    (and delivered after that connect) must go to both locations, not only to the one the pass started with."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE, location_id="loc-a")
    directory = world.directory
    delivered: list[str] = []
    answer_at_start = directory.get_mailbox

    async def connect_and_deliver_once_the_pass_began(**by: str) -> object:
        began_with = await answer_at_start(**by)
        if not delivered:
            world.connect(ALICE, location_id="loc-b")
            delivered.extend(world.deliver(ALICE, subject="after both connects"))
        return began_with

    directory.get_mailbox = connect_and_deliver_once_the_pass_began  # type: ignore[method-assign]

    assert await world.syncer().sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    async def recorded() -> bool:
        return bool(world.recorder.recorded.normalized)

    await eventually(recorded, within=60)
    (event,) = world.recorder.recorded.normalized
    assert event.gmail_message_id == delivered[0]
    assert sorted(c.location_id for c in event.connections) == ["loc-a", "loc-b"]


async def test_a_pass_that_may_not_run_yet_takes_no_lease_and_asks_gmail_nothing(
    ingest_world: IngestWorld,
) -> None:
    """The lease is taken only when the row allows the pass (store.Readiness): a push too soon after a pass, a
    lease another worker holds and a push while the mailbox backs off each end before Gmail is asked anything;
    a re-check or poll of that backing-off mailbox runs."""
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer(min_push_interval=dt.timedelta(minutes=5))
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED
    waiting = world.deliver(ALICE, subject="waits")
    listings = _history_lists(world)

    assert await syncer.sync(mailbox.mailbox_id, "PUSH") is PassOutcome.TOO_SOON
    # The push comes back when the interval since that pass ends, not a whole interval later.
    with pytest.raises(RetryLater) as too_soon:
        await syncer.handle(work_item_delivery(mailbox.mailbox_id))
    assert 0 < too_soon.value.delay < 300

    now = dt.datetime.now(dt.UTC)
    async with world.db.write() as session:
        other = await store.start_pass(
            session,
            mailbox.mailbox_id,
            "another-worker",
            now=now,
            ttl=dt.timedelta(hours=1),
            state=SyncState.SYNCING,
            safety_check_at=now,
            caused_by="",
        )
    assert other is not None
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.BUSY
    # Most passes are short: a work item that finds one running comes back after the re-check delay (0.3 s in
    # these tests), then doubling up to busy_retry_seconds while the pass goes on.
    patient = world.syncer(owner="worker-3", busy_retry_seconds=2.0, min_push_interval=dt.timedelta(0))
    waits = []
    for num_delivered in (1, 2, 3, 10):
        with pytest.raises(RetryLater) as busy:
            await patient.handle(work_item_delivery(mailbox.mailbox_id, num_delivered=num_delivered))
        waits.append(busy.value.delay)
    assert waits == pytest.approx([0.3, 0.6, 1.2, 2.0])
    # A re-check delay of 0 (allowed) must not send the item straight back while the pass runs.
    eager = world.syncer(
        owner="worker-4",
        busy_retry_seconds=2.0,
        min_push_interval=dt.timedelta(0),
        timing=replace(world.timing, recheck_delay=dt.timedelta(0)),
    )
    with pytest.raises(RetryLater) as busy:
        await eager.handle(work_item_delivery(mailbox.mailbox_id))
    assert busy.value.delay > 0
    async with world.db.write() as session:
        await store.release_lease(session, other.lease)
        await store.set_state(
            session, mailbox.mailbox_id, SyncState.BACKING_OFF, next_attempt_at=now + dt.timedelta(hours=1)
        )
    no_push_interval = world.syncer(owner="worker-2", min_push_interval=dt.timedelta(0))
    assert await no_push_interval.sync(mailbox.mailbox_id, "PUSH") is PassOutcome.BACKING_OFF
    assert _history_lists(world) == listings, "no pass that may not run lists Gmail's history"

    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    assert _history_lists(world) == listings + 1

    async def published() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(waiting)

    await eventually(published, within=60)
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.state == "IDLE" and row.lease_owner is None


def _history_lists(world: IngestWorld) -> int:
    """history.list calls the sandbox has answered, over all its users."""
    users = world.sandbox.admin.quota().get("users", {}).values()
    return sum(int(u.get("methods", {}).get("gmail.users.history.list", {}).get("calls", 0)) for u in users)
