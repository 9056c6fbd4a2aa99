"""A sync pass whose JetStream acknowledgements come late (nats-server paused with SIGSTOP past the publish
timeout, as a loaded CI machine once stalled it): the cause of the ingest burst test's unexplained extra publish
attempt. Failing the pass on the timeout made the next pass publish the whole window again, each message a second
attempt the stream de-duplicated; sending the timed-out publish again in place with the same Nats-Msg-Id keeps
every message at one attempt. The negative control runs the pass as before the fix (one send per publish)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from services.ingest.sync import PassOutcome
from tests.fixtures.ingest_world import IngestWorld
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"
MESSAGES = 5
SYNC_LOGGER = "services.ingest.sync"


@contextmanager
def paused(nats_server: Any) -> Iterator[None]:
    """nats-server stopped (SIGSTOP): it reads nothing and answers nothing until the block ends (SIGCONT)."""
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)


async def stalled_pass(
    world: IngestWorld, nats_server: Any, caplog: pytest.LogCaptureFixture, ack_attempts: int
) -> tuple[str, list[str], PassOutcome]:
    """Runs one pass over MESSAGES new messages while the server is paused, until a publish timed out."""
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    delivered = await asyncio.to_thread(world.deliver, ALICE, MESSAGES)
    syncer = world.syncer(publish_ack_attempts=ack_attempts)
    caplog.set_level(logging.WARNING, logger=SYNC_LOGGER)
    with paused(nats_server):
        running = asyncio.create_task(syncer.sync(mailbox.mailbox_id, "POLL"))

        async def a_publish_timed_out() -> bool:
            # Resent in place (the fix), or the pass failed on it (the control).
            return running.done() or any("not acknowledged in time" in r.message for r in caplog.records)

        await eventually(a_publish_timed_out, within=60)
    async with asyncio.timeout(120):
        outcome = await running
    return mailbox.mailbox_id, delivered, outcome


async def test_a_pass_whose_acknowledgements_come_late_publishes_each_message_in_one_attempt(
    ingest_world: IngestWorld, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    world = ingest_world
    _, delivered, outcome = await stalled_pass(world, nats_server, caplog, ack_attempts=3)

    assert outcome is PassOutcome.SYNCED
    assert world.counter.attempts == dict.fromkeys(delivered, 1)

    async def all_recorded() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

    await eventually(all_recorded, within=30)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)


async def test_negative_control_failing_the_pass_on_the_timeout_publishes_every_message_twice(
    ingest_world: IngestWorld, nats_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    world = ingest_world
    mailbox_id, delivered, outcome = await stalled_pass(world, nats_server, caplog, ack_attempts=1)
    assert outcome is PassOutcome.FAILED

    # The retry pass publishes the window again: the server had stored it, so the stream drops every repeat.
    retried = await world.syncer(publish_ack_attempts=1).sync(mailbox_id, "POLL")

    assert retried is PassOutcome.SYNCED
    assert world.counter.attempts == dict.fromkeys(delivered, 2)
    assert world.counter.duplicates == dict.fromkeys(delivered, 1)

    async def all_recorded() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

    await eventually(all_recorded, within=30)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
