"""What `open_foundation` wires into every service, observed on a running service: the declared streams, the
outbox relay publishing an event staged in the service's database, and the dead-letters command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.outbox import stage
from services.runtime.streams import ALL_STREAMS
from services.threading.app import build
from services.threading.settings import ThreadingSettings
from tests.fixtures.services import service_settings


async def test_a_started_service_declares_the_streams_and_relays_its_outbox(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=database_target,
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
    )
    running = await run_service_in_process(settings, build)
    assert "outbox-relay" in running.tasks

    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        for spec in ALL_STREAMS:
            assert (await js.stream_info(spec.name)).config.name == spec.name
        subject = subjects.contact_created("loc-a")
        received: asyncio.Queue[Any] = asyncio.Queue()
        await client.subscribe(subject, cb=received.put)
        event = events_pb2.ContactCreated(location_id="loc-a")
        async with running.components.database.write() as session:
            await stage(session, subject, event, msg_id="contact-created-1")
        message = await asyncio.wait_for(received.get(), timeout=10)
        assert events_pb2.ContactCreated.FromString(message.data).location_id == "loc-a"
        assert message.headers["Nats-Msg-Id"] == "contact-created-1"
    finally:
        await client.close()


def test_the_dead_letters_command_lists_a_fresh_service_as_having_none(
    tmp_path: Path, nats_server: Any
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    env.update({"MAILSYNC_DATA_DIR": str(tmp_path), "MAILSYNC_NATS_URL": nats_server.url})
    result = subprocess.run(
        [sys.executable, "-m", "services.threading", "dead-letters", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters"
