"""A consumer process SIGKILLed between its commit and its ack produces its effect exactly once, thanks to the
idempotency claim; the same crash without the claim shows the duplicate (the negative control). The same holds for
a batch consumer, which acks a whole batch only after the batch's one commit: the kill redelivers the batch."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import select

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.db import Database
from services.runtime.faults import CONSUMER_AFTER_HANDLER
from services.runtime.jetstream import publish
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import eventually, start_messaging_program, wait_for_exit
from tests.fixtures.messaging_programs import CONSUMER_SPEC, MAILBOX, PROGRAM_METADATA, effects_table

EVENTS = 3


async def _crash_between_commit_and_ack(
    db: Database,
    js: JetStreamContext,
    nats_url: str,
    target: Any,
    state_dir: Path,
    *,
    claim: str,
    program: str = "consumer",
) -> list[str]:
    """Runs the consumer program, kills it at the fault point once, restarts it, and returns the effect rows."""
    async with db.engine.begin() as connection:
        await connection.run_sync(PROGRAM_METADATA.create_all)
    await declare_streams(js)
    for index in range(EVENTS):
        event = events_pb2.NormalizedMessage(mailbox_id=MAILBOX, subject=f"event {index}")
        await publish(js, subjects.normalized(MAILBOX), event, msg_id=f"{MAILBOX}:{index}")
    env = {
        "NATS_URL": nats_url,
        **target.env(""),
        "MAILSYNC_FAULTS": f"{CONSUMER_AFTER_HANDLER}:once",
        "MAILSYNC_FAULTS_STATE_DIR": str(state_dir),
        "MAILSYNC_TEST_CLAIM": claim,
    }

    crashed = start_messaging_program([program], env)
    assert await wait_for_exit(crashed) == -signal.SIGKILL
    assert (state_dir / f"{CONSUMER_AFTER_HANDLER}.fired").exists()

    restarted = start_messaging_program([program], env)
    try:

        async def drained() -> bool:
            info = await js.consumer_info(MESSAGES.name, CONSUMER_SPEC.durable)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert await wait_for_exit(restarted) == 0

    async with db.read() as session:
        return list((await session.execute(select(effects_table.c.msg_id))).scalars())


async def test_consumer_killed_between_commit_and_ack_applies_each_effect_exactly_once(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    rows = await _crash_between_commit_and_ack(
        runtime_database, jetstream, nats_server.url, database_target, tmp_path, claim="on"
    )
    assert sorted(rows) == sorted(f"{MAILBOX}:{index}" for index in range(EVENTS))


async def test_negative_control_without_the_claim_the_same_crash_duplicates_an_effect(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    rows = await _crash_between_commit_and_ack(
        runtime_database, jetstream, nats_server.url, database_target, tmp_path, claim="off"
    )
    assert set(rows) == {f"{MAILBOX}:{index}" for index in range(EVENTS)}
    assert len(rows) == EVENTS + 1


async def test_batch_consumer_killed_between_commit_and_ack_applies_each_effect_exactly_once(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    rows = await _crash_between_commit_and_ack(
        runtime_database,
        jetstream,
        nats_server.url,
        database_target,
        tmp_path,
        claim="on",
        program="batch-consumer",
    )
    assert sorted(rows) == sorted(f"{MAILBOX}:{index}" for index in range(EVENTS))


async def test_negative_control_the_batch_killed_before_its_acks_is_redelivered_whole(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    rows = await _crash_between_commit_and_ack(
        runtime_database,
        jetstream,
        nats_server.url,
        database_target,
        tmp_path,
        claim="off",
        program="batch-consumer",
    )
    # Without the claim every message of the committed batch is applied a second time: none was acked.
    assert sorted(rows) == sorted(2 * [f"{MAILBOX}:{index}" for index in range(EVENTS)])
