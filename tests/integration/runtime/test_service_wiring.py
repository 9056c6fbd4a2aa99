"""What `open_foundation` wires into every service, observed on a running service: the declared streams, the
outbox relay publishing an event staged in the service's database, and the dead-letters command."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.outbox import stage
from services.runtime.streams import ALL_STREAMS
from services.threading.app import build
from services.threading.settings import ThreadingSettings
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS
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
        message = await asyncio.wait_for(received.get(), timeout=HANG_BOUND_FLOOR_SECONDS)
        assert events_pb2.ContactCreated.FromString(message.data).location_id == "loc-a"
        assert message.headers["Nats-Msg-Id"] == "contact-created-1"
    finally:
        await client.close()


def dead_letters(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.threading", *argv],
        env=env,
        capture_output=True,
        text=True,
        # A hang bound: `migrate` took over 60 s beside a second test run on two cores.
        timeout=240,
    )


def test_the_dead_letters_command_never_migrates_and_lists_a_migrated_service_as_having_none(
    tmp_path: Path, nats_server: Any
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    env.update(
        {
            "MAILSYNC_DATA_DIR": str(tmp_path),
            "MAILSYNC_NATS_URL": nats_server.url,
            "MAILSYNC_DEPENDENCY_WAIT_SECONDS": "2",
        }
    )

    refused = dead_letters(env, "dead-letters", "list")
    assert refused.returncode == 2, refused.stderr
    # Logs go to stderr as JSON lines for this command; the failure is the one plain line.
    [line] = [line for line in refused.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert "never migrates" in line and "python -m services.threading migrate" in line
    database = tmp_path / "threading.db"
    if database.exists():
        with sqlite3.connect(database) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == []

    assert dead_letters(env, "migrate").returncode == 0
    listed = dead_letters(env, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no dead letters"
    missing = dead_letters(env, "dead-letters", "show", "7")
    assert missing.returncode == 1 and missing.stdout.strip() == "no dead letter 7"


async def test_no_other_listener_can_share_a_running_service_port(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    """Two servers on one port would split its calls between them (a test once reached another service's server
    and got "Method not found"): the port is held without SO_REUSEPORT, so a second listener is refused."""
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=database_target,
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
    )
    running = await run_service_in_process(settings, build)
    with socket.socket() as second:
        second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as refused:
            second.bind(("127.0.0.1", running.port))
    assert refused.value.errno == errno.EADDRINUSE
