"""The consumer loop against a real nats-server and database: dead letters after max_deliver and their redrive,
RetryLater waits that do not count as failures, and a graceful stop that finishes the message in hand."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.consumer import Consumer, ConsumerSpec, Delivery, Handler, RetryLater, declare_consumer
from services.runtime.db import Database
from services.runtime.deadletters import (
    REDRIVE_OF_HEADER,
    DeadLetterAlreadyRedriven,
    list_dead_letters,
    redrive,
    run_cli,
)
from services.runtime.inbox import claim
from services.runtime.jetstream import publish
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually

MAILBOX = "mbx-c"


def _spec(**overrides: Any) -> ConsumerSpec:
    values: dict[str, Any] = {
        "stream": MESSAGES.name,
        "durable": "consumer-test",
        "filter_subjects": (subjects.NORMALIZED_ALL,),
        "ack_wait": 5.0,
        "max_deliver": 3,
        "retry_delay": 0.05,
        "max_retry_delay": 0.2,
    }
    values.update(overrides)
    return ConsumerSpec(**values)


@asynccontextmanager
async def _running(
    client: Client, db: Database, spec: ConsumerSpec, handler: Handler
) -> AsyncIterator[Consumer]:
    consumer = Consumer(client, spec, handler, db=db, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)


async def _publish(js: JetStreamContext, text: str, msg_id: str) -> None:
    event = events_pb2.NormalizedMessage(mailbox_id=MAILBOX, subject=text)
    await publish(js, subjects.normalized(MAILBOX), event, msg_id=msg_id)


def _recording_handler(
    db: Database, spec: ConsumerSpec, poisoned: Callable[[], bool]
) -> tuple[Handler, list[Delivery]]:
    done: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        event = delivery.parse(events_pb2.NormalizedMessage)
        if event.subject == "poison" and poisoned():
            raise ValueError("cannot place this message")
        assert delivery.msg_id
        async with db.write() as session:
            if await claim(session, spec.durable, delivery.msg_id):
                done.append(delivery)

    return handle, done


async def test_poison_message_is_dead_lettered_after_max_deliver_and_redriven_to_a_fixed_handler(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client, nats_server: Any
) -> None:
    db, js = runtime_database, jetstream
    await declare_streams(js)
    spec = _spec()
    fixed = False
    handler, done = _recording_handler(db, spec, lambda: not fixed)

    async with _running(nats_client, db, spec, handler):
        await _publish(js, "poison", "p-1")
        await _publish(js, "fine", "f-1")

        async def dead_lettered() -> bool:
            return len(await list_dead_letters(db)) == 1

        await eventually(dead_lettered)
        [letter] = await list_dead_letters(db)
        assert (letter.subject, letter.msg_id, letter.num_delivered) == (
            subjects.normalized(MAILBOX),
            "p-1",
            3,
        )
        assert letter.consumer == spec.durable and letter.stream == MESSAGES.name
        assert "cannot place this message" in letter.error
        assert events_pb2.NormalizedMessage.FromString(letter.payload).subject == "poison"
        assert [d.msg_id for d in done] == ["f-1"]

        listing = io.StringIO()
        assert await run_cli(["list"], db=db, nats_url=nats_server.url, out=listing) == 0
        assert f"{letter.id}\tdead" in listing.getvalue() and "msg_id=p-1" in listing.getvalue()

        shown = io.StringIO()
        assert await run_cli(["show", str(letter.id)], db=db, nats_url=nats_server.url, out=shown) == 0
        document = json.loads(shown.getvalue())
        assert document["payload"]["type"] == "mailsync.v1.NormalizedMessage"
        assert document["payload"]["value"]["subject"] == "poison"
        assert (document["msg_id"], document["state"]) == ("p-1", "dead")
        assert "cannot place this message" in document["error"]

        fixed = True
        redriving = io.StringIO()
        assert await run_cli(["redrive", str(letter.id)], db=db, nats_url=nats_server.url, out=redriving) == 0

        async def redriven_processed() -> bool:
            return len(done) == 2

        await eventually(redriven_processed)

    redelivered = done[1]
    assert redelivered.parse(events_pb2.NormalizedMessage).subject == "poison"
    assert redelivered.headers[REDRIVE_OF_HEADER] == "p-1"
    assert redelivered.msg_id != "p-1"
    assert await list_dead_letters(db) == []
    [record] = await list_dead_letters(db, include_redriven=True)
    assert record.redriven_at is not None and record.redrive_msg_id == redelivered.msg_id
    try:
        await redrive(db, js, letter.id)
    except DeadLetterAlreadyRedriven:
        pass
    else:
        raise AssertionError("a second redrive of the same dead letter was accepted")


def _waiting_handler(waits: int, seen: list[int]) -> Handler:
    async def handle(delivery: Delivery) -> None:
        seen.append(delivery.num_delivered)
        if delivery.num_delivered <= waits:
            raise RetryLater(0.02, "a send of this mailbox is pending")

    return handle


async def test_retry_later_waits_beyond_max_deliver_without_a_dead_letter(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    seen: list[int] = []
    spec = _spec(max_deliver=2, max_waits=10)

    async with _running(nats_client, runtime_database, spec, _waiting_handler(4, seen)):
        await _publish(jetstream, "echo", "w-1")

        async def handled() -> bool:
            return len(seen) == 5

        await eventually(handled)
        await eventually(lambda: _stream_empty(jetstream))

    assert seen == [1, 2, 3, 4, 5]
    assert await list_dead_letters(runtime_database) == []


async def test_negative_control_without_a_wait_budget_retry_later_ends_in_a_dead_letter(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    seen: list[int] = []
    spec = _spec(max_deliver=2, max_waits=0)

    async with _running(nats_client, runtime_database, spec, _waiting_handler(4, seen)):
        await _publish(jetstream, "echo", "w-2")

        async def dead_lettered() -> bool:
            return len(await list_dead_letters(runtime_database)) == 1

        await eventually(dead_lettered)

    [letter] = await list_dead_letters(runtime_database)
    assert seen == [1, 2]
    assert "still waiting after 2 deliveries" in letter.error

    # An operator decides it is not worth redriving: discard deletes it (and only it).
    out = io.StringIO()
    assert await run_cli(["discard", str(letter.id)], db=runtime_database, nats_url="", out=out) == 0
    assert out.getvalue().startswith(f"discarded dead letter {letter.id} ")
    assert await list_dead_letters(runtime_database, include_redriven=True) == []
    again = io.StringIO()
    assert await run_cli(["discard", str(letter.id)], db=runtime_database, nats_url="", out=again) == 1


async def test_stop_finishes_the_message_in_hand_and_acks_it(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str | None] = []

    async def slow(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(delivery.msg_id)

    consumer = Consumer(nats_client, _spec(), slow, db=runtime_database, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await _publish(jetstream, "slow", "s-1")
    await asyncio.wait_for(started.wait(), timeout=HANG_BOUND_FLOOR_SECONDS)
    consumer.stop()
    await asyncio.sleep(0.1)
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)

    assert finished == ["s-1"]
    assert await _stream_empty(jetstream)


async def _stream_empty(js: JetStreamContext) -> bool:
    return (await js.stream_info(MESSAGES.name)).state.messages == 0


async def test_message_whose_last_delivery_crashed_becomes_a_dead_letter_and_leaves_the_work_queue(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    spec = _spec(max_deliver=2, ack_wait=0.5)
    await declare_consumer(jetstream, spec)
    crashed_worker = await jetstream.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    await _publish(jetstream, "crashes its worker", "c-1")
    # Two deliveries that never come back, as if two worker processes died holding the message.
    for expected in (1, 2):
        [taken] = await crashed_worker.fetch(1, timeout=5)
        assert taken.metadata.num_delivered == expected
    await crashed_worker.unsubscribe()

    async def never_called(delivery: Delivery) -> None:
        raise AssertionError("a message past max_deliver was delivered again")

    async with _running(nats_client, runtime_database, spec, never_called):

        async def dead_lettered() -> bool:
            return len(await list_dead_letters(runtime_database)) == 1

        await eventually(dead_lettered)
        await eventually(lambda: _stream_empty(jetstream))

    [letter] = await list_dead_letters(runtime_database)
    assert (letter.msg_id, letter.num_delivered) == ("c-1", 2)
    assert "no outcome after 2 deliveries" in letter.error
    assert events_pb2.NormalizedMessage.FromString(letter.payload).subject == "crashes its worker"
