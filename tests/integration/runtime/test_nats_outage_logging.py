"""A NATS outage is two WARNING lines of the client (lost, back with the count of failed attempts) and at most two
of each consumer loop (failing, working again), never an ERROR with a traceback per reconnect attempt."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

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

SPEC = ConsumerSpec(stream=MESSAGES.name, durable="outage-log", filter_subjects=(subjects.NORMALIZED_ALL,))
# Long enough for several reconnect attempts (every 0.5 s) and failed fetches (every second).
OUTAGE_SECONDS = 4.0


async def test_an_outage_is_logged_when_it_starts_and_when_it_ends(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_client: Client,
    nats_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await declare_streams(jetstream)
    handled: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery)

    consumer = Consumer(nats_client, SPEC, handle, db=runtime_database, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    try:
        await publish(jetstream, subjects.normalized("mbx-o"), events_pb2.NormalizedMessage(), msg_id="o-1")

        async def first_handled() -> bool:
            return len(handled) == 1

        await eventually(first_handled, within=30)
        caplog.clear()
        caplog.set_level(logging.DEBUG)

        nats_server.kill()
        await asyncio.sleep(OUTAGE_SECONDS)
        nats_server.start()

        await publish(jetstream, subjects.normalized("mbx-o"), events_pb2.NormalizedMessage(), msg_id="o-2")

        async def second_handled() -> bool:
            return len(handled) == 2

        await eventually(second_handled, within=60)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)

    client_lines = [r.getMessage() for r in caplog.records if r.name == "services.runtime.nats_client"]
    assert client_lines == ["NATS connection lost; reconnecting", "NATS connection back"], client_lines
    [back] = [r for r in caplog.records if r.getMessage() == "NATS connection back"]
    assert back.failed_attempts >= 1  # type: ignore[attr-defined]
    fetch_lines = [r.getMessage() for r in caplog.records if "fetch from outage-log" in r.getMessage()]
    assert len(fetch_lines) <= 2, fetch_lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        (r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR
    ]
