"""A SIGKILLed and restarted nats-server: the consumer loop and the outbox relay carry on by themselves, nothing is
lost, and the redeliveries a broker crash causes (reference/reliability.md exp2b) leave no duplicate effect."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import insert, select

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.consumer import Consumer, ConsumerSpec, Delivery
from services.runtime.db import Database
from services.runtime.inbox import claim
from services.runtime.outbox import OutboxRelay, outbox_status, stage
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually
from tests.fixtures.messaging_programs import PROGRAM_METADATA, effects_table

SPEC = ConsumerSpec(
    stream=MESSAGES.name, durable="broker-crash", filter_subjects=(subjects.NORMALIZED_ALL,), ack_wait=1.0
)
SUBJECT = subjects.normalized("mbx-b")
EVENTS = 40


async def test_consumer_and_relay_survive_a_broker_crash_with_every_effect_exactly_once(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client, nats_server: Any
) -> None:
    db = runtime_database
    async with db.engine.begin() as connection:
        await connection.run_sync(PROGRAM_METADATA.create_all)
    await declare_streams(jetstream)

    async def handle(delivery: Delivery) -> None:
        assert delivery.msg_id
        async with db.write() as session:
            if await claim(session, SPEC.durable, delivery.msg_id):
                await session.execute(insert(effects_table).values(msg_id=delivery.msg_id))

    async def stage_events(indexes: range) -> None:
        for index in indexes:
            async with db.write() as session:
                await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject=str(index)), f"b-{index}")

    consumer = Consumer(nats_client, SPEC, handle, db=db, fetch_timeout=0.5)
    relay = OutboxRelay(db, jetstream, poll_interval=0.2)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    try:
        await stage_events(range(EVENTS // 2))

        async def some_effects() -> bool:
            async with db.read() as session:
                return len((await session.execute(select(effects_table.c.msg_id))).all()) >= 5

        await eventually(some_effects)
        nats_server.kill()
        # Events staged while the broker is down wait in the outbox.
        await stage_events(range(EVENTS // 2, EVENTS))
        nats_server.start()

        async def all_effects() -> bool:
            async with db.read() as session:
                return len(set((await session.execute(select(effects_table.c.msg_id))).scalars())) == EVENTS

        await eventually(all_effects, within=60)
        assert (await outbox_status(db)).pending == 0
    finally:
        consumer.stop()
        relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=HANG_BOUND_FLOOR_SECONDS)

    async with db.read() as session:
        rows = list((await session.execute(select(effects_table.c.msg_id))).scalars())
    assert sorted(rows) == sorted(f"b-{index}" for index in range(EVENTS))
