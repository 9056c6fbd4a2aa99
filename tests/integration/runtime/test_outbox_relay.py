"""The outbox relay in one process: prompt wake-up after a commit, rolled-back events never leave, status and
pruning, and the idempotency claim on both databases."""

from __future__ import annotations

import asyncio
import datetime as dt

from nats.js import JetStreamContext
from sqlalchemy import func, select

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.clock import FrozenClock
from services.runtime.db import Database
from services.runtime.inbox import claim
from services.runtime.messaging_tables import outbox_table
from services.runtime.outbox import OutboxRelay, outbox_status, prune_published, stage
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually

SUBJECT = subjects.normalized("mbx-o")


class Rollback(Exception):
    pass


async def _stream_count(js: JetStreamContext) -> int:
    return (await js.stream_info(MESSAGES.name)).state.messages


async def test_relay_wakes_on_commit_and_never_publishes_a_rolled_back_event(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    await declare_streams(jetstream)
    # A poll interval far beyond the wait below: only the commit signal can get the event out in time.
    relay = OutboxRelay(runtime_database, jetstream, poll_interval=600)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)
        try:
            async with runtime_database.write() as session:
                await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject="undone"), "rb-1")
                raise Rollback
        except Rollback:
            pass
        async with runtime_database.write() as session:
            await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject="kept"), "ok-1")

        async def published() -> bool:
            return await _stream_count(jetstream) == 1

        await eventually(published, within=60)
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)

    stored = await jetstream.get_last_msg(MESSAGES.name, SUBJECT)
    assert events_pb2.NormalizedMessage.FromString(stored.data).subject == "kept"
    assert (await outbox_status(runtime_database)).pending == 0


async def test_relay_publishes_in_staging_order_and_status_reports_the_backlog(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    await declare_streams(jetstream)
    clock = FrozenClock(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))
    for index in range(3):
        async with runtime_database.write() as session:
            await stage(
                session, SUBJECT, events_pb2.NormalizedMessage(subject=f"e{index}"), f"e-{index}", clock=clock
            )
        clock.advance(dt.timedelta(seconds=10))

    status = await outbox_status(runtime_database, clock=clock)
    assert status.pending == 3
    assert status.oldest_pending_age == dt.timedelta(seconds=30)

    relay = OutboxRelay(runtime_database, jetstream, clock=clock, batch_size=2)
    assert await relay.publish_pending() == 2
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0
    assert (await outbox_status(runtime_database, clock=clock)).pending == 0

    order = []
    for sequence in range(1, 4):
        message = await jetstream.get_msg(MESSAGES.name, sequence)
        order.append(events_pb2.NormalizedMessage.FromString(message.data).subject)
    assert order == ["e0", "e1", "e2"]

    assert await prune_published(runtime_database, older_than=clock.now() - dt.timedelta(hours=1)) == 0
    assert await prune_published(runtime_database, older_than=clock.now() + dt.timedelta(seconds=1)) == 3
    async with runtime_database.read() as session:
        assert (await session.execute(select(func.count()).select_from(outbox_table))).scalar_one() == 0


async def test_a_refused_publish_stops_the_pass_there_and_the_next_pass_sends_it_and_the_rest_again(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    """Publishes go out pipelined, but only the acknowledged prefix is marked: an event no stream takes (the
    server refuses it) holds back the events staged after it, which go again (de-duplicated) once it can land."""
    await declare_streams(jetstream)
    nowhere = "mailsync.v1.nowhere.outbox-test"
    async with runtime_database.write() as session:
        await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject="first"), "p-1")
        await stage(session, nowhere, events_pb2.NormalizedMessage(subject="refused"), "p-2")
        await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject="after"), "p-3")
    relay = OutboxRelay(runtime_database, jetstream)

    assert await relay.publish_pending() == 1
    assert (await outbox_status(runtime_database)).pending == 2

    await jetstream.add_stream(name="OUTBOX_TEST", subjects=[nowhere])
    assert await relay.publish_pending() == 2
    assert (await outbox_status(runtime_database)).pending == 0
    # "after" landed in the first pass too: its second publish was only reported duplicate.
    assert await _stream_count(jetstream) == 2
    assert (await jetstream.stream_info("OUTBOX_TEST")).state.messages == 1


async def test_claim_wins_once_per_consumer_and_message(runtime_database: Database) -> None:
    async with runtime_database.write() as session:
        assert await claim(session, "threading", "m-1") is True
        assert await claim(session, "threading", "m-1") is False
        assert await claim(session, "ingest", "m-1") is True


async def test_claim_rolls_back_with_the_effect(runtime_database: Database) -> None:
    try:
        async with runtime_database.write() as session:
            assert await claim(session, "threading", "m-2") is True
            raise Rollback
    except Rollback:
        pass
    async with runtime_database.write() as session:
        assert await claim(session, "threading", "m-2") is True


async def test_concurrent_claims_of_one_message_have_exactly_one_winner(runtime_database: Database) -> None:
    async def attempt() -> bool:
        async with runtime_database.write() as session:
            return await claim(session, "threading", "m-race")

    results = await asyncio.gather(*(attempt() for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]


async def test_two_relays_together_publish_every_event_once(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    await declare_streams(jetstream)
    for index in range(30):
        async with runtime_database.write() as session:
            await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject=str(index)), f"two-{index}")
    relays = [OutboxRelay(runtime_database, jetstream, batch_size=4) for _ in range(2)]
    publishes = 0
    while (await outbox_status(runtime_database)).pending:
        publishes += sum(await asyncio.gather(*(relay.publish_pending() for relay in relays)))

    assert await _stream_count(jetstream) == 30
    if runtime_database.dialect == "postgresql":
        # SKIP LOCKED: a row locked by one relay is skipped by the other, so no event is sent twice.
        assert publishes == 30
    else:
        # SQLite relays may both send a row; JetStream's de-duplication keeps the stream exact.
        assert publishes >= 30


async def test_housekeeping_forgets_claims_past_their_retention(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    clock = FrozenClock(dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    async with runtime_database.write() as session:
        assert await claim(session, "threading", "old", clock=clock)
    clock.advance(dt.timedelta(days=15))
    async with runtime_database.write() as session:
        assert await claim(session, "threading", "recent", clock=clock)

    await OutboxRelay(
        runtime_database, jetstream, clock=clock, claim_retention=dt.timedelta(days=14)
    ).housekeep()

    async with runtime_database.write() as session:
        assert await claim(session, "threading", "old", clock=clock) is True
        assert await claim(session, "threading", "recent", clock=clock) is False
