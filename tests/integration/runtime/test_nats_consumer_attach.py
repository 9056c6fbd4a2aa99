"""A consumer loop that starts while JetStream does not answer (nats-server down, or up without JetStream, as right
after a restart) keeps trying to declare its durable consumer, one WARNING per attempt, and attaches and delivers
once JetStream is back; its loop does not end (which used to stop the whole service: docs/chaos.md)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.consumer import Consumer, ConsumerSpec, Delivery
from services.runtime.db import Database
from services.runtime.jetstream import publish
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS, eventually
from tests.fixtures.nats_server import NatsServer, nats_server_binary

SPEC = ConsumerSpec(stream=MESSAGES.name, durable="late-attach", filter_subjects=(subjects.NORMALIZED_ALL,))
DECLARE_WARNING = "declaring consumer late-attach"


@contextmanager
def broker_without_jetstream(server: NatsServer) -> Iterator[None]:
    """A plain nats-server on the broker's port: connections work, JetStream requests find no responder."""
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(server.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def no_broker() -> Iterator[None]:
    yield


@pytest.mark.parametrize("outage", ["stopped", "without-jetstream"])
async def test_a_consumer_started_while_jetstream_does_not_answer_attaches_when_it_is_back(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_client: Client,
    nats_server: NatsServer,
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    await declare_streams(jetstream)
    handled: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery)

    caplog.set_level(logging.WARNING)
    nats_server.stop()
    consumer = Consumer(nats_client, SPEC, handle, db=runtime_database, fetch_timeout=0.5)
    task: asyncio.Task[None] | None = None
    try:
        with broker_without_jetstream(nats_server) if outage == "without-jetstream" else no_broker():
            task = asyncio.create_task(consumer.run())

            async def declare_retried() -> bool:
                assert task is not None and not task.done(), f"the consumer loop ended while away: {task!r}"
                return sum(DECLARE_WARNING in r.getMessage() for r in caplog.records) >= 2

            await eventually(declare_retried)
        nats_server.start()

        async def published() -> bool:
            # The test's own publish also meets a JetStream that is still recovering right after the restart.
            try:
                await publish(
                    jetstream,
                    subjects.normalized("mbx-late"),
                    events_pb2.NormalizedMessage(),
                    msg_id="late-1",
                )
            except (TimeoutError, nats.errors.Error):
                return False
            return True

        await eventually(published, every=0.5)

        async def delivered() -> bool:
            assert task is not None and not task.done(), f"the consumer loop ended: {task!r}"
            return len(handled) == 1

        await eventually(delivered)
    finally:
        consumer.stop()
        if task is not None:
            await asyncio.wait_for(
                asyncio.gather(task, return_exceptions=True), timeout=HANG_BOUND_FLOOR_SECONDS
            )
        # The fixture stops the broker it started: make sure there is one to stop and to close the client on.
        if nats_server.process is None or nats_server.process.poll() is not None:
            nats_server.start()

    retries = [r for r in caplog.records if DECLARE_WARNING in r.getMessage()]
    # One line per attempt, no traceback attached.
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in retries)
