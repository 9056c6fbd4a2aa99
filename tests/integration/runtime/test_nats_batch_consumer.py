"""The batch consumer against a real nats-server and database: in a batch, a poison message is settled alone and
dead-lettered while the rest is applied and acked; a waiting message (RetryLater) does not hold back the others; a
batch whose transaction fails is split until the message that makes it fail is alone. Each check also runs
against an all-or-nothing consumer (the batch settled as one unit), which it must catch: the negative controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import CheckConstraint, Column, MetaData, String, Table, insert, select

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.consumer import (
    TOP_UP_FETCH_SECONDS,
    BatchConsumer,
    BatchHandler,
    ConsumerSpec,
    Delivery,
    Outcome,
    RetryLater,
    declare_consumer,
    fetch_more,
)
from services.runtime.db import Database
from services.runtime.deadletters import list_dead_letters
from services.runtime.inbox import claim
from services.runtime.jetstream import publish
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually

MAILBOX = "mbx-b"
FINE = [f"fine-{index}" for index in range(7)]
# Seven fine messages with one that waits (RetryLater) in the middle.
WITH_A_WAITING_ONE = [*FINE[:4], "wait", *FINE[4:]]

Consumed = TypeVar("Consumed", bound=BatchConsumer)

TEST_METADATA = MetaData()
# A value longer than 20 characters fails the statement, and with it the whole batch's transaction.
batch_effects = Table(
    "batch_effects",
    TEST_METADATA,
    Column("msg_id", String(255), primary_key=True),
    Column("value", String(255), nullable=False),
    CheckConstraint("length(value) <= 20", name="ck_batch_effects_short"),
)


def _spec(**overrides: Any) -> ConsumerSpec:
    values: dict[str, Any] = {
        "stream": MESSAGES.name,
        "durable": "batch-test",
        "filter_subjects": (subjects.NORMALIZED_ALL,),
        "ack_wait": 10.0,
        "max_deliver": 3,
        "retry_delay": 0.05,
        "max_retry_delay": 0.2,
        "batch": 64,
    }
    values.update(overrides)
    return ConsumerSpec(**values)


class AllOrNothingConsumer(BatchConsumer):
    """What the checks must catch: a batch settled as one unit (no split, one outcome for all).

    `settled` lists the subjects of each batch once it is settled, so a check can wait for that instead of waiting
    out a bound for something that never comes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled: list[list[str]] = []

    async def _settle(self, messages: Sequence[Msg], deliveries: Sequence[Delivery]) -> None:
        try:
            outcomes = list(await self._handler(deliveries))
            unit: Exception | None = next((o for o in outcomes if o is not None), None)
        except Exception as exc:
            unit = exc
        if unit is None:
            await self._ack_all(messages, deliveries)
        else:
            for message, delivery in zip(messages, deliveries, strict=True):
                await self._settle_unapplied(message, delivery, unit)
        self.settled.append(_texts(messages))


@pytest.fixture
async def effects_db(runtime_database: Database) -> Database:
    async with runtime_database.engine.begin() as connection:
        await connection.run_sync(TEST_METADATA.create_all)
    return runtime_database


def _handler(db: Database, calls: list[list[str]]) -> BatchHandler:
    """Applies a batch in one transaction: one effect row per message, claimed so a repeat is a no-op.

    A message whose text is "undecodable" fails alone; "wait" waits; a long text makes the transaction fail."""

    async def handle(deliveries: Sequence[Delivery]) -> list[Outcome]:
        calls.append([d.msg_id or "" for d in deliveries])
        outcomes: list[Outcome] = []
        async with db.write() as session:
            for delivery in deliveries:
                text = delivery.parse(events_pb2.NormalizedMessage).subject
                if text == "undecodable":
                    outcomes.append(ValueError("cannot decode this event"))
                    continue
                if text == "wait":
                    outcomes.append(RetryLater(60.0, "waits for something that does not come"))
                    continue
                assert delivery.msg_id
                if await claim(session, "batch-test", delivery.msg_id):
                    await session.execute(insert(batch_effects).values(msg_id=delivery.msg_id, value=text))
                outcomes.append(None)
        return outcomes

    return handle


def _consumer(
    consumer_cls: type[Consumed], client: Client, db: Database, calls: list[list[str]], **spec: Any
) -> Consumed:
    """A batch consumer of the test's durable, applying with `_handler` (its calls recorded in `calls`)."""
    return consumer_cls(client, _spec(**spec), _handler(db, calls), db=db, fetch_timeout=0.5)


async def _publish_all(js: JetStreamContext, texts: list[str]) -> None:
    await declare_streams(js)
    for text in texts:
        event = events_pb2.NormalizedMessage(mailbox_id=MAILBOX, subject=text)
        await publish(js, subjects.normalized(MAILBOX), event, msg_id=text)


@asynccontextmanager
async def _running(consumer: BatchConsumer) -> AsyncIterator[BatchConsumer]:
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)


async def _effects(db: Database) -> list[str]:
    async with db.read() as session:
        return sorted((await session.execute(select(batch_effects.c.msg_id))).scalars())


async def _stream_holds(js: JetStreamContext) -> int:
    return int((await js.stream_info(MESSAGES.name)).state.messages)


async def _run_with_poison(
    consumer_cls: type[BatchConsumer], db: Database, js: JetStreamContext, client: Client, poison: str
) -> list[list[str]]:
    """Runs seven fine messages and a poison one until the stream is empty (each applied and acked, or
    dead-lettered); returns the handler's calls. Every consumer here reaches that end, the negative controls too."""
    texts = [*FINE[:3], poison, *FINE[3:]]
    await _publish_all(js, texts)
    calls: list[list[str]] = []
    consumer = _consumer(consumer_cls, client, db, calls)
    async with _running(consumer):

        async def every_message_settled() -> bool:
            return await _stream_holds(js) == 0

        await eventually(every_message_settled)
    return calls


async def _dead_lettered(db: Database) -> list[str]:
    return sorted(letter.msg_id or "" for letter in await list_dead_letters(db))


async def test_a_poison_message_in_a_batch_is_dead_lettered_alone_and_the_rest_applied_at_once(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    calls = await _run_with_poison(BatchConsumer, effects_db, jetstream, nats_client, "undecodable")
    assert await _dead_lettered(effects_db) == ["undecodable"]
    assert await _effects(effects_db) == sorted(FINE)
    # The whole batch was handed over at once; only the poison came back, alone.
    assert sorted(calls[0]) == sorted([*FINE, "undecodable"])
    assert all(call == ["undecodable"] for call in calls[1:])
    [letter] = await list_dead_letters(effects_db)
    assert letter.num_delivered == 3
    assert "cannot decode this event" in letter.error


async def test_negative_control_an_all_or_nothing_consumer_dead_letters_the_innocent_messages_too(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await _run_with_poison(AllOrNothingConsumer, effects_db, jetstream, nats_client, "undecodable")
    dead = await _dead_lettered(effects_db)
    # The messages fetched with the poison share its fate. A loaded server may hand the first of them over in an
    # earlier fetch of their own (those apply), so the check is that some innocent message was dead-lettered.
    assert "undecodable" in dead
    assert set(dead) & set(FINE)


async def test_a_batch_whose_transaction_fails_is_split_until_the_poison_is_alone(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    poison = "far too long to be stored in this table"
    calls = await _run_with_poison(BatchConsumer, effects_db, jetstream, nats_client, poison)
    assert await _dead_lettered(effects_db) == [poison]
    assert await _effects(effects_db) == sorted(FINE)
    assert sorted(calls[0]) == sorted([*FINE, poison])
    # Halves of halves: the poison's sub-batches shrink to one message; the others are applied in few calls.
    with_poison = [len(call) for call in calls if poison in call]
    assert with_poison[:4] == [8, 4, 2, 1]
    assert len(calls) < 20
    [letter] = await list_dead_letters(effects_db)
    assert letter.num_delivered == 3
    assert "ck_batch_effects_short" in letter.error or "CHECK constraint" in letter.error


async def test_negative_control_without_the_split_a_failing_batch_applies_nothing(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    poison = "far too long to be stored in this table"
    await _run_with_poison(AllOrNothingConsumer, effects_db, jetstream, nats_client, poison)
    # The fine messages fetched with the poison are held back with it and dead-lettered; as above, those a loaded
    # server handed over in an earlier fetch of their own apply, so the check is that not all of them did.
    assert await _effects(effects_db) != sorted(FINE)
    assert set(await _dead_lettered(effects_db)) & set(FINE)


async def test_a_waiting_message_in_a_batch_does_not_hold_back_the_others(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await _publish_all(jetstream, WITH_A_WAITING_ONE)
    consumer = _consumer(BatchConsumer, nats_client, effects_db, [])
    async with _running(consumer):

        async def the_others_applied_and_acked_while_it_waits() -> bool:
            return await _effects(effects_db) == sorted(FINE) and await _stream_holds(jetstream) == 1

        # The waiting message comes back only after 60 s; the others must not wait for it.
        await eventually(the_others_applied_and_acked_while_it_waits)
    assert await list_dead_letters(effects_db) == []
    waiting = await jetstream.get_msg(MESSAGES.name, 5)
    assert events_pb2.NormalizedMessage.FromString(waiting.data or b"").subject == "wait"


async def test_negative_control_an_all_or_nothing_consumer_makes_the_batch_wait(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await _publish_all(jetstream, WITH_A_WAITING_ONE)
    consumer = _consumer(AllOrNothingConsumer, nats_client, effects_db, [])
    async with _running(consumer):

        async def the_waiting_batch_settled() -> bool:
            return any("wait" in batch for batch in consumer.settled)

        await eventually(the_waiting_batch_settled)
        [waiting_batch] = [batch for batch in consumer.settled if "wait" in batch]
        # Every message of that batch waits with it: none was acked, so all are still in the stream.
        assert len(waiting_batch) > 1
        assert await _stream_holds(jetstream) >= len(waiting_batch)


# -- a short fetch topped up (ConsumerSpec.linger) -----------------------------------------------------------------


async def _pull(js: JetStreamContext) -> Any:
    await declare_consumer(js, _spec())
    return await js.pull_subscribe_bind(durable="batch-test", stream=MESSAGES.name)


def _texts(messages: Sequence[Msg]) -> list[str]:
    return [events_pb2.NormalizedMessage.FromString(m.data).subject for m in messages]


async def test_a_short_fetch_is_topped_up_with_what_arrived_since_in_stream_order(
    jetstream: JetStreamContext,
) -> None:
    await _publish_all(jetstream, FINE[:2])
    subscription = await _pull(jetstream)
    first = await subscription.fetch(64, timeout=HANG_BOUND_FLOOR_SECONDS)
    assert _texts(first) == FINE[:2]
    await _publish_all(jetstream, FINE[2:5])

    topped_up = await fetch_more(subscription, first, up_to=64, wait=HANG_BOUND_FLOOR_SECONDS)

    assert _texts(topped_up) == FINE[:5]
    sequences = [m.metadata.sequence.stream for m in topped_up]
    assert sequences == sorted(sequences) == list(range(1, 6))


async def test_a_top_up_takes_no_more_than_the_batch_and_leaves_the_rest_in_the_stream(
    jetstream: JetStreamContext,
) -> None:
    await _publish_all(jetstream, FINE[:1])
    subscription = await _pull(jetstream)
    first = await subscription.fetch(64, timeout=HANG_BOUND_FLOOR_SECONDS)
    await _publish_all(jetstream, FINE[1:6])

    topped_up = await fetch_more(subscription, first, up_to=3, wait=HANG_BOUND_FLOOR_SECONDS)

    assert _texts(topped_up) == FINE[:3]
    rest = await subscription.fetch(64, timeout=HANG_BOUND_FLOOR_SECONDS)
    assert _texts(rest) == FINE[3:6]


async def test_a_top_up_that_finds_nothing_keeps_the_batch_as_it_was(jetstream: JetStreamContext) -> None:
    await _publish_all(jetstream, FINE[:2])
    subscription = await _pull(jetstream)
    first = await subscription.fetch(64, timeout=HANG_BOUND_FLOOR_SECONDS)

    assert _texts(await fetch_more(subscription, first, up_to=64, wait=0.2)) == FINE[:2]


class _FetchWaits:
    """A real pull subscription that records how long each fetch may wait."""

    def __init__(self, subscription: Any) -> None:
        self._subscription = subscription
        self.waits: list[float] = []

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 (nats-py's signature)
        self.waits.append(timeout)
        return list(await self._subscription.fetch(batch, timeout=timeout))


async def test_a_top_up_lingers_once_and_then_takes_only_what_the_server_holds(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await _publish_all(jetstream, FINE[:1])
    subscription = _FetchWaits(await _pull(jetstream))
    first = await subscription.fetch(64, timeout=HANG_BOUND_FLOOR_SECONDS)
    consumer = _consumer(BatchConsumer, nats_client, effects_db, [], linger=0.5)

    topped_up = await consumer._top_up(subscription, first)

    # Waiting the linger again in the fetch would make a message that came alone wait twice the linger.
    assert subscription.waits[1:] == [TOP_UP_FETCH_SECONDS]
    assert _texts(topped_up) == FINE[:1]


async def test_a_lingering_batch_consumer_applies_every_message_once(
    effects_db: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    # The loop path: every fetch is short here (one message at a time), so each is topped up before it is applied.
    await declare_streams(jetstream)
    calls: list[list[str]] = []
    consumer = _consumer(BatchConsumer, nats_client, effects_db, calls, linger=0.05)
    async with _running(consumer):
        for text in FINE:
            await _publish_all(jetstream, [text])

        async def all_applied() -> bool:
            return await _effects(effects_db) == sorted(FINE) and await _stream_holds(jetstream) == 0

        await eventually(all_applied, within=HANG_BOUND_FLOOR_SECONDS)
    applied = [msg_id for call in calls for msg_id in call]
    assert sorted(applied) == sorted(FINE) and applied == FINE
