"""The scheduler: a mailbox that just had work is re-checked without a push (Google drops pushes), and a mailbox
that keeps failing backs off, turns FAILED, is retried later, and never holds up the other mailboxes."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mailsync.v1 import events_pb2
from services.ingest import store
from services.ingest.mailboxes import MailboxInfo
from services.ingest.sync import MailboxSyncer, PassOutcome
from services.ingest.work import queue_sync
from services.runtime import subjects
from services.runtime.consumer import RetryLater
from services.runtime.gmail import RetryableGmailError
from tests.fixtures.ingest_world import IngestWorld, work_item_delivery
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"
BOB = "bob@example.com"


async def push(world: IngestWorld, mailbox_id: str, key: str) -> None:
    await queue_sync(
        world.js, mailbox_id, "", reason="PUSH", msg_id=f"{mailbox_id}:{key}", now=dt.datetime.now(dt.UTC)
    )


async def published(world: IngestWorld, gmail_ids: list[str]) -> bool:
    return set(world.recorder.recorded.normalized_ids()) >= set(gmail_ids)


async def test_a_mailbox_that_had_work_is_rechecked_without_a_push(ingest_world: IngestWorld) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    world.start_workers(world.syncer(), count=1)
    world.start_scheduler()
    first = world.deliver(ALICE, copies=2)
    await push(world, mailbox.mailbox_id, "1")
    await eventually(lambda: published(world, first), within=60)
    # Its push is dropped by Google: nobody tells ingest about this one.
    (unpushed,) = world.deliver(ALICE)

    await eventually(lambda: published(world, [unpushed]), within=60)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys([*first, unpushed], 1)


async def test_a_recheck_is_queued_when_it_falls_due_not_at_the_schedulers_next_tick(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    work_items: list[events_pb2.MailboxChanged] = []

    async def seen(message: Msg) -> None:
        work_items.append(events_pb2.MailboxChanged.FromString(message.data))

    await world.nats.subscribe(subjects.mailbox_changed(mailbox.mailbox_id), cb=seen)
    # The scheduler steps once as it starts and then once an hour: only the pass's word can bring the re-check.
    scheduler = world.start_scheduler(interval=3600)
    world.start_workers(world.syncer(expect_check_in=scheduler.expect_check_in), count=1)
    first = world.deliver(ALICE, copies=2)
    await push(world, mailbox.mailbox_id, "1")
    await eventually(lambda: published(world, first), within=60)

    async def rechecked() -> bool:
        return any(item.reason == events_pb2.MAILBOX_CHANGE_REASON_RECHECK for item in work_items)

    await eventually(rechecked, within=60)


async def test_a_recheck_that_finds_nothing_writes_nothing_and_the_safety_poll_stands_behind_it(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    syncer = world.syncer()
    outcomes: list[tuple[str, PassOutcome]] = []
    attempt = syncer._attempt

    async def recorded(mailbox_id: str, reason: str) -> Any:
        done = await attempt(mailbox_id, reason)
        outcomes.append((reason, done.outcome))
        return done

    syncer._attempt = recorded  # type: ignore[method-assign]
    world.start_workers(syncer, count=1)
    world.start_scheduler()
    first = world.deliver(ALICE, copies=2)
    await push(world, mailbox.mailbox_id, "1")
    await eventually(lambda: published(world, first), within=60)

    async def a_recheck_found_nothing() -> bool:
        return ("RECHECK", PassOutcome.NOTHING_NEW) in outcomes

    await eventually(a_recheck_found_nothing, within=60)
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.state == "IDLE" and row.lease_owner is None
    # The scheduler left a safety poll behind the re-check it queued; the re-check, finding nothing, kept it.
    assert row.next_attempt_reason == "POLL"
    due_in = (row.next_attempt_at.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < due_in <= world.timing.safety_poll_interval.total_seconds()


async def note_push_now(world: IngestWorld, address: str) -> dt.datetime:
    """What the push intake does when a push comes, without the HTTP and the token: the row notes when."""
    pushed_at = dt.datetime.now(dt.UTC)
    async with world.db.write() as session:
        assert await store.note_push(session, address, 0, now=pushed_at) is not None
    return pushed_at


async def a_synced_mailbox(
    world: IngestWorld, gmail_push_seconds: float
) -> tuple[MailboxInfo, MailboxSyncer]:
    """Alice's mailbox after its first pass (its row and cursor), with Gmail's push interval as given; a push
    right after that pass runs at once (no min_push_interval)."""
    world.timing = replace(world.timing, gmail_push_interval=dt.timedelta(seconds=gmail_push_seconds))
    mailbox = world.connect(ALICE)
    syncer = world.syncer(min_push_interval=dt.timedelta(0))
    assert await syncer.sync(mailbox.mailbox_id, "POLL") is PassOutcome.SYNCED
    return mailbox, syncer


async def test_the_rechecks_go_on_until_the_last_push_interval_is_over_as_gmail_drops_the_pushes_within_it(
    ingest_world: IngestWorld,
) -> None:
    """Gmail drops (not delays) the notification of a change made within its interval after the last one. A
    re-check that finds nothing in that interval does not end the re-checks: its work item comes back when the
    interval is over, and a change made meanwhile, of which no push tells, is found then. The interval is long
    here (60 s) so that nothing below depends on how fast the machine is; the test drives each pass itself."""
    world = ingest_world
    mailbox, syncer = await a_synced_mailbox(world, gmail_push_seconds=60)
    (announced,) = world.deliver(ALICE)
    pushed_at = await note_push_now(world, ALICE)
    assert await syncer.sync(mailbox.mailbox_id, "PUSH") is PassOutcome.SYNCED
    assert await published(world, [announced])

    # The re-check after that work finds nothing, and says it looks again when the interval is over.
    with pytest.raises(RetryLater) as waits:
        await syncer.handle(work_item_delivery(mailbox.mailbox_id, events_pb2.MAILBOX_CHANGE_REASON_RECHECK))
    left = (pushed_at + world.timing.gmail_push_interval - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < waits.value.delay <= 60 and abs(waits.value.delay - left) < 5

    (unannounced,) = world.deliver(ALICE)  # its notification dropped: no push
    assert await syncer.sync(mailbox.mailbox_id, "RECHECK") is PassOutcome.SYNCED
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys([announced, unannounced], 1)


async def test_a_pass_that_finds_nothing_within_the_last_push_interval_leaves_a_recheck_for_its_end(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    mailbox, syncer = await a_synced_mailbox(world, gmail_push_seconds=60)
    pushed_at = await note_push_now(world, ALICE)
    # A push whose change a re-check already took: its pass finds nothing.
    assert await syncer.sync(mailbox.mailbox_id, "PUSH") is PassOutcome.SYNCED
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.next_attempt_reason == "RECHECK"
    assert row.next_attempt_at.replace(tzinfo=dt.UTC) == pushed_at + world.timing.gmail_push_interval


async def test_a_recheck_that_finds_nothing_after_the_last_push_interval_ends_the_rechecks(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    mailbox, syncer = await a_synced_mailbox(world, gmail_push_seconds=0)
    await note_push_now(world, ALICE)
    assert await syncer.sync(mailbox.mailbox_id, "RECHECK") is PassOutcome.NOTHING_NEW
    # Through the work stream's handler: acknowledged, nothing to come back.
    await syncer.handle(work_item_delivery(mailbox.mailbox_id, events_pb2.MAILBOX_CHANGE_REASON_RECHECK))


async def test_a_recheck_starts_its_own_trace_linked_to_the_pass_that_scheduled_it(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    world.start_workers(world.syncer(), count=1, tracer_provider=provider)
    world.start_scheduler(tracer_provider=provider)
    first = world.deliver(ALICE, copies=2)
    await queue_sync(
        world.js,
        mailbox.mailbox_id,
        "",
        reason="PUSH",
        msg_id=f"{mailbox.mailbox_id}:traced",
        now=dt.datetime.now(dt.UTC),
        tracer_provider=provider,
    )
    await eventually(lambda: published(world, first), within=10)

    def passes() -> list:  # type: ignore[type-arg]
        return [s for s in exporter.get_finished_spans() if s.name == "process mailbox.changed"]

    def publishes() -> list:  # type: ignore[type-arg]
        return [s for s in exporter.get_finished_spans() if s.name == "publish mailbox.changed"]

    async def rechecked() -> bool:
        return any(p.links for p in publishes()) and len({p.context.trace_id for p in passes()}) >= 2

    await eventually(rechecked, within=15)
    [pushed] = [p for p in publishes() if not p.links]
    pushed_passes = {p.context.span_id for p in passes() if p.context.trace_id == pushed.context.trace_id}
    [recheck_publish, *_] = [p for p in publishes() if p.links]
    # The re-check is a trace of its own (not a child of a pass that ended seconds ago) ...
    assert recheck_publish.kind == SpanKind.PRODUCER and recheck_publish.parent is None
    assert recheck_publish.context.trace_id != pushed.context.trace_id
    # ... whose first span links to the pushed pass that had work and scheduled it.
    [link] = recheck_publish.links
    assert link.context.trace_id == pushed.context.trace_id
    assert link.context.span_id in pushed_passes
    [recheck] = [p for p in passes() if p.context.trace_id == recheck_publish.context.trace_id]
    assert recheck.parent is not None and recheck.parent.span_id == recheck_publish.context.span_id


async def test_without_rechecks_an_unpushed_message_waits_for_the_safety_poll_negative_control(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.timing = replace(
        world.timing, recheck_delay=dt.timedelta(hours=1), safety_poll_interval=dt.timedelta(hours=1)
    )
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    world.start_workers(world.syncer(), count=1)
    world.start_scheduler()
    first = world.deliver(ALICE, copies=2)
    await push(world, mailbox.mailbox_id, "1")
    await eventually(lambda: published(world, first), within=60)
    (unpushed,) = world.deliver(ALICE)
    await asyncio.sleep(2)
    assert unpushed not in world.recorder.recorded.normalized_ids()


class FlakyTokens:
    """Auth is unreachable for one mailbox until `healed`; the others get their tokens."""

    def __init__(self, inner: object, failing_mailbox: str) -> None:
        self._inner = inner
        self._failing = failing_mailbox
        self.healed = False

    async def access_token(self, mailbox_id: str) -> str:
        if mailbox_id == self._failing and not self.healed:
            raise RetryableGmailError("auth unavailable")
        return await self._inner.access_token(mailbox_id)  # type: ignore[attr-defined]

    def forget_token(self, mailbox_id: str, rejected: str = "") -> None:
        self._inner.forget_token(mailbox_id, rejected)  # type: ignore[attr-defined]

    def drop_token(self, mailbox_id: str) -> None:
        self._inner.drop_token(mailbox_id)  # type: ignore[attr-defined]


async def test_a_failing_mailbox_backs_off_turns_failed_is_retried_and_never_blocks_others(
    ingest_world: IngestWorld,
) -> None:
    world = ingest_world
    world.timing = replace(
        world.timing,
        backoff_base=dt.timedelta(seconds=0.1),
        backoff_max=dt.timedelta(seconds=0.4),
        failures_before_failed=3,
        failed_retry=dt.timedelta(seconds=1.5),
    )
    world.sandbox.create_mailbox(ALICE)
    world.sandbox.create_mailbox(BOB)
    alice, bob = world.connect(ALICE), world.connect(BOB)
    flaky = FlakyTokens(world.tokens, alice.mailbox_id)
    world.tokens = flaky  # type: ignore[assignment]
    world.start_workers(world.syncer(), count=1)
    world.start_scheduler()
    alice_mail = world.deliver(ALICE, copies=2)
    await push(world, alice.mailbox_id, "1")

    async def failed() -> bool:
        async with world.db.read() as session:
            row = await store.get_sync_row(session, alice.mailbox_id)
        return row is not None and row.state == "FAILED"

    await eventually(failed, within=30)
    async with world.db.read() as session:
        row = await store.get_sync_row(session, alice.mailbox_id)
    assert row is not None and row.consecutive_failures >= 3 and "auth unavailable" in row.last_error
    # Meanwhile another mailbox syncs as usual on the same single worker.
    bob_mail = world.deliver(BOB, copies=2)
    await push(world, bob.mailbox_id, "1")
    await eventually(lambda: published(world, bob_mail), within=30)
    assert not set(alice_mail) & set(world.recorder.recorded.normalized_ids())

    flaky.healed = True
    await eventually(lambda: published(world, alice_mail), within=30)

    async def recovered() -> bool:
        # The pass records its success after its publishes, so the row follows a moment later.
        async with world.db.read() as session:
            row = await store.get_sync_row(session, alice.mailbox_id)
        return row is not None and row.consecutive_failures == 0 and row.last_error == ""

    await eventually(recovered, within=30)
