"""Consumers on an idle stream (a real nats-server): when a fetch of more than one message finds nothing, nats-py
raises a `TimeoutError` (its own subclass, or asyncio's, which is the built-in, depending on where the wait ends);
both consumer kinds treat it as "nothing yet", keep running, and handle the next message that arrives. An earlier
run saw such a timeout end ingest; this pins that it cannot."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.runtime.consumer import (
    BatchConsumer,
    Consumer,
    ConsumerSpec,
    Delivery,
    Outcome,
    declare_consumer,
)
from services.runtime.db import Database
from services.runtime.jetstream import publish
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually

FETCH_TIMEOUT = 0.1
# Idle fetches each consumer goes through before a message arrives.
IDLE_FETCHES = 15


STREAM = "IDLE_TEST"


async def _declare_stream(js: JetStreamContext) -> None:
    # A stream of its own that keeps messages by limits: any number of consumers may read the same subjects.
    await js.add_stream(name=STREAM, subjects=["idle-test.>"])


def _spec(durable: str) -> ConsumerSpec:
    return ConsumerSpec(
        stream=STREAM,
        durable=durable,
        filter_subjects=("idle-test.>",),
        ack_wait=10.0,
        max_deliver=3,
        batch=32,
    )


async def test_a_batch_fetch_on_an_empty_stream_raises_the_builtin_timeout_error(
    jetstream: JetStreamContext,
) -> None:
    await _declare_stream(jetstream)
    await declare_consumer(jetstream, _spec("idle-probe"))
    subscription = await jetstream.pull_subscribe_bind(durable="idle-probe", stream=STREAM)
    with pytest.raises(TimeoutError) as raised:
        await subscription.fetch(32, timeout=FETCH_TIMEOUT)
    # What the consumers' loop catches (`except TimeoutError`), whichever of the two it is.
    assert isinstance(raised.value, TimeoutError)
    await subscription.unsubscribe()


async def test_both_consumer_kinds_survive_idle_batch_fetches_and_handle_what_arrives_next(
    jetstream: JetStreamContext, nats_client: Client, runtime_database: Database
) -> None:
    await _declare_stream(jetstream)
    seen: dict[str, list[str]] = {"single": [], "batch": []}

    async def one(delivery: Delivery) -> None:
        seen["single"].append(delivery.msg_id or "")

    async def many(deliveries: Sequence[Delivery]) -> list[Outcome]:
        seen["batch"].extend(d.msg_id or "" for d in deliveries)
        return [None] * len(deliveries)

    consumers = [
        Consumer(nats_client, _spec("idle-single"), one, db=runtime_database, fetch_timeout=FETCH_TIMEOUT),
        BatchConsumer(
            nats_client, _spec("idle-batch"), many, db=runtime_database, fetch_timeout=FETCH_TIMEOUT
        ),
    ]
    tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        # Long enough for many empty fetches; a consumer that died on one is done by now.
        await asyncio.sleep(FETCH_TIMEOUT * IDLE_FETCHES)
        assert [task.done() for task in tasks] == [False, False], [
            repr(t.exception()) + str(getattr(t.exception(), "description", "")) for t in tasks if t.done()
        ]
        event = events_pb2.NormalizedMessage(mailbox_id="mbx-idle", subject="after the quiet")
        await publish(jetstream, "idle-test.mbx-idle", event, msg_id="after-idle")

        async def both_handled() -> bool:
            return seen == {"single": ["after-idle"], "batch": ["after-idle"]}

        await eventually(both_handled, within=30)
        assert [task.done() for task in tasks] == [False, False]
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=HANG_BOUND_FLOOR_SECONDS
        )
