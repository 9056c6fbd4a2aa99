"""The outbox relay process SIGKILLed after the commit or between publish and mark still publishes every event
exactly once; the negative controls show what the check sees without the outbox (a lost event) and without
JetStream de-duplication (a duplicate event)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from services.runtime.db import Database
from services.runtime.faults import OUTBOX_AFTER_COMMIT, OUTBOX_AFTER_PUBLISH
from services.runtime.jetstream import MSG_ID_HEADER
from services.runtime.outbox import outbox_status
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import start_messaging_program, wait_for_exit
from tests.fixtures.messaging_programs import PROGRAM_METADATA, event_msg_id

EVENTS = 5


async def _run_killed_once(
    db: Database,
    nats_url: str,
    target: Any,
    state_dir: Path,
    *,
    point: str,
    mode: str = "outbox",
    before_restart: Any = None,
) -> None:
    async with db.engine.begin() as connection:
        await connection.run_sync(PROGRAM_METADATA.create_all)
    env = {
        "NATS_URL": nats_url,
        **target.env(""),
        "MAILSYNC_FAULTS": f"{point}:once",
        "MAILSYNC_FAULTS_STATE_DIR": str(state_dir),
        "MAILSYNC_TEST_OUTBOX": mode,
    }
    crashed = start_messaging_program(["outbox", str(EVENTS)], env)
    assert await wait_for_exit(crashed) == -signal.SIGKILL
    if before_restart is not None:
        await before_restart()
    restarted = start_messaging_program(["outbox", str(EVENTS)], env)
    assert await wait_for_exit(restarted) == 0


async def _stream_msg_ids(js: JetStreamContext) -> list[str]:
    state = (await js.stream_info(MESSAGES.name)).state
    ids = []
    for sequence in range(state.first_seq, state.last_seq + 1):
        message = await js.get_msg(MESSAGES.name, sequence)
        assert message.headers is not None
        ids.append(message.headers[MSG_ID_HEADER])
    return ids


EXPECTED = sorted(event_msg_id(index) for index in range(EVENTS))


async def test_relay_killed_after_commit_before_publish_publishes_every_event_once(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    await declare_streams(jetstream)
    await _run_killed_once(
        runtime_database, nats_server.url, database_target, tmp_path, point=OUTBOX_AFTER_COMMIT
    )

    assert sorted(await _stream_msg_ids(jetstream)) == EXPECTED
    assert (await outbox_status(runtime_database)).pending == 0


async def test_relay_killed_between_publish_and_mark_publishes_every_event_once(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    await declare_streams(jetstream)
    await _run_killed_once(
        runtime_database, nats_server.url, database_target, tmp_path, point=OUTBOX_AFTER_PUBLISH
    )

    assert sorted(await _stream_msg_ids(jetstream)) == EXPECTED


async def test_negative_control_publishing_after_commit_without_outbox_loses_the_event(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    await declare_streams(jetstream)
    await _run_killed_once(
        runtime_database, nats_server.url, database_target, tmp_path, point=OUTBOX_AFTER_COMMIT, mode="direct"
    )

    published = await _stream_msg_ids(jetstream)
    assert event_msg_id(0) not in published
    assert sorted(published) == EXPECTED[1:]


async def test_negative_control_without_deduplication_the_republish_is_a_duplicate(
    runtime_database: Database,
    jetstream: JetStreamContext,
    nats_server: Any,
    database_target: Any,
    tmp_path: Path,
) -> None:
    await declare_streams(jetstream)
    config = (await jetstream.stream_info(MESSAGES.name)).config
    config.duplicate_window = 0.2
    await jetstream.update_stream(config)

    async def let_the_window_pass() -> None:
        await asyncio.sleep(1.0)

    await _run_killed_once(
        runtime_database,
        nats_server.url,
        database_target,
        tmp_path,
        point=OUTBOX_AFTER_PUBLISH,
        before_restart=let_the_window_pass,
    )

    published = await _stream_msg_ids(jetstream)
    assert sorted(set(published)) == EXPECTED
    # The relay publishes a pass pipelined and was killed before marking it: every event of that pass (at least
    # one) is published again, and without de-duplication each repeat stays in the stream.
    assert len(published) > EVENTS
