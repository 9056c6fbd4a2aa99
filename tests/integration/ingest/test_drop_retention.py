"""R18 for BCC drops: a drop that syncs nowhere keeps no body. Ingest's store (SQLite and PostgreSQL), its outbox
relay and a real nats-server; threading is played by a pull consumer on the work stream and by `message.synced`
events, as threading publishes them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from mailsync.v1 import common_pb2, events_pb2
from services.ingest import store
from services.ingest.app import MIGRATIONS_DIR
from services.ingest.bcc_drop import AcceptedDrop
from services.ingest.domain.bcc import AuthenticatedAuthor
from services.ingest.drop_pipeline import placement_consumer_spec
from services.ingest.drop_retention import DropEventQueue, DropRetention
from services.ingest.drops import OutboxDropSink
from services.runtime import streams, subjects
from services.runtime.clock import FrozenClock
from services.runtime.consumer import Consumer
from services.runtime.db import Database, migrate
from services.runtime.outbox import OutboxRelay
from services.runtime.streams import declare_streams
from tests.fixtures.messaging import eventually

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(minutes=10)
RETENTION = dt.timedelta(days=3)
LOCATION = "loc-r18"


def raw_drop(*, attachment: bool, message_id: str | None) -> bytes:
    header = (
        "From: u@crm.test\r\nTo: c@client.test\r\nSubject: s\r\nDate: Thu, 26 Nov 2026 11:59:00 +0000\r\n"
    )
    if message_id:
        header += f"Message-ID: {message_id}\r\n"
    if not attachment:
        return (header + "\r\nJust text.\r\n").encode()
    return (
        header
        + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee.\r\n'
        "--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n%PDF\r\n"
        "--b--\r\n"
    ).encode()


def accepted(raw: bytes) -> AcceptedDrop:
    return AcceptedDrop(
        drop_id=uuid.uuid4().hex,
        location_id=LOCATION,
        sender_user_id="u1",
        envelope_recipient="bcc+x@drop.test",
        author=AuthenticatedAuthor("u@crm.test", "crm.test", "dmarc", "crm.test"),
        content_digest=hashlib.sha256(raw).hexdigest(),
        raw=raw,
    )


@dataclass
class World:
    db: Database
    js: JetStreamContext
    nats: Client
    clock: FrozenClock
    retention: DropRetention
    sink: OutboxDropSink
    relay: OutboxRelay

    async def drop(self, *, attachment: bool = True, message_id: str | None = None) -> AcceptedDrop:
        drop = accepted(raw_drop(attachment=attachment, message_id=message_id))
        await self.sink.accept_drop(drop)
        await self.relay.publish_pending()
        return drop

    async def content(self, drop: AcceptedDrop) -> bytes | None:
        async with self.db.read() as session:
            return await store.drop_content(session, drop.drop_id, now=self.clock.now())

    async def kept(self, drop: AcceptedDrop) -> bool:
        """Whether the row is still there, whatever its expiry (what a purge may have deleted)."""
        async with self.db.read() as session:
            return (
                await store.drop_content(session, drop.drop_id, now=NOW - dt.timedelta(days=365)) is not None
            )

    async def threading_decides_all(self) -> int:
        """Threading consumes and acknowledges every waiting drop event (the work stream then deletes them)."""
        subscription = await self.js.pull_subscribe_bind("threading-standin", stream=streams.MESSAGES.name)
        decided = 0
        try:
            while True:
                try:
                    messages = await subscription.fetch(50, timeout=1)
                except TimeoutError:
                    return decided
                for message in messages:
                    await message.ack_sync()
                    decided += 1
        finally:
            await subscription.unsubscribe()

    async def threading_places(self, drop: AcceptedDrop, message_id: str) -> None:
        event = events_pb2.MessageSynced(
            location_id=LOCATION,
            message_id=f"m-{drop.drop_id}",
            rfc_message_id=message_id,
            source=common_pb2.MESSAGE_SOURCE_BCC_DROP,
            rule_id="R9",
        )
        await self.js.publish(subjects.message_synced(LOCATION), event.SerializeToString())


@pytest.fixture
async def world(database: Database, nats_client: Client, jetstream: JetStreamContext) -> AsyncIterator[World]:
    await migrate(database, MIGRATIONS_DIR)
    await declare_streams(jetstream)
    await jetstream.add_consumer(
        streams.MESSAGES.name,
        ConsumerConfig(
            durable_name="threading-standin",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=subjects.NORMALIZED_ALL,
        ),
    )
    clock = FrozenClock(NOW)
    retention = DropRetention(
        database,
        placement_grace=GRACE,
        retention=RETENTION,
        undecided=DropEventQueue(jetstream),
        interval_seconds=60,
        clock=clock,
    )
    yield World(
        database,
        jetstream,
        nats_client,
        clock,
        retention,
        OutboxDropSink(database, retention=retention, clock=clock),
        OutboxRelay(database, jetstream, clock=clock),
    )


async def test_R18_a_drop_without_attachments_keeps_no_content_at_all(world: World) -> None:
    text_only = await world.drop(attachment=False, message_id="<t@crm.test>")
    with_attachment = await world.drop(attachment=True, message_id="<a@crm.test>")

    assert not await world.kept(text_only)
    # Control: a drop with an attachment keeps its content for threading to fetch.
    assert await world.content(with_attachment) == with_attachment.raw


async def test_R18_a_drop_threading_decided_not_to_place_is_forgotten_after_the_grace(world: World) -> None:
    drop = await world.drop(message_id="<unplaced@crm.test>")

    world.clock.advance(GRACE + dt.timedelta(seconds=1))
    # Threading has not decided yet (the event is still in the work stream): the content stays.
    assert await world.retention.purge_once() == 0
    assert await world.kept(drop)

    assert await world.threading_decides_all() == 1
    world.clock.advance(GRACE + dt.timedelta(seconds=1))
    assert await world.retention.purge_once() == 1
    assert not await world.kept(drop)


async def test_R18_a_drop_threading_placed_keeps_its_content_for_the_retention(world: World) -> None:
    placed = await world.drop(message_id="<placed@crm.test>")
    unplaced = await world.drop(message_id="<other@crm.test>")
    consumer = Consumer(world.nats, placement_consumer_spec(), world.retention.handle_synced, db=world.db)
    running = asyncio.create_task(consumer.run())
    try:
        await world.threading_decides_all()
        await world.threading_places(placed, "<placed@crm.test>")

        async def extended() -> bool:
            async with world.db.read() as session:
                return await store.drop_content(session, placed.drop_id, now=NOW + GRACE * 2) is not None

        await eventually(extended, within=60)
    finally:
        consumer.stop()
        await running

    world.clock.advance(GRACE + dt.timedelta(seconds=1))
    assert await world.retention.purge_once() == 1
    assert await world.kept(placed) and not await world.kept(unplaced)
    world.clock.advance(RETENTION)
    assert await world.retention.purge_once() == 1
    assert not await world.kept(placed)


async def test_R18_a_drop_without_message_id_is_known_placed_when_threading_fetches_it(world: World) -> None:
    fetched = await world.drop(message_id=None)
    never_fetched = await world.drop(message_id=None)
    await world.threading_decides_all()

    await world.retention.fetched(fetched.drop_id)
    world.clock.advance(GRACE + dt.timedelta(seconds=1))

    assert await world.retention.purge_once() == 1
    assert await world.kept(fetched) and not await world.kept(never_fetched)


async def test_R18_an_event_still_in_the_outbox_is_undecided(world: World) -> None:
    drop = accepted(raw_drop(attachment=True, message_id="<outbox@crm.test>"))
    await world.sink.accept_drop(drop)  # staged, not yet relayed (NATS was down, say)

    world.clock.advance(GRACE + dt.timedelta(seconds=1))
    assert await world.retention.purge_once() == 0
    assert await world.kept(drop)

    await world.relay.publish_pending()
    await world.threading_decides_all()
    world.clock.advance(GRACE + dt.timedelta(seconds=1))
    assert await world.retention.purge_once() == 1
