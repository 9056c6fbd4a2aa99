"""Two threading service processes share one stream: a burst of replies in many Gmail threads, delivered out of
order and twice, ends with exactly one thread per Gmail thread and every message stored and announced once, even
when one replica is killed with SIGKILL in the middle and restarted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from mailsync.v1 import common_pb2, events_pb2
from services.runtime import subjects
from services.runtime.jetstream import publish
from services.runtime.streams import SYNCED, declare_streams
from services.threading.codec import to_timestamp
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import MessageRow, SeenMessageRow, ThreadMessageRow, ThreadRow
from tests.fixtures.messaging import eventually
from tests.fixtures.services import crm_public_keys_value
from tests.fixtures.threading_messages import T0, at

THREADS = 8
PER_THREAD = 5
ROOT = Path(__file__).resolve().parents[3]


def start_replica(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.threading"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def thread_messages(thread: int) -> list[events_pb2.NormalizedMessage]:
    contact = "carol@example.com" if thread % 2 else "dave@example.com"
    result, previous = [], []
    for index in range(PER_THREAD):
        outbound = index % 2 == 1
        rfc = f"<t{thread}-m{index}@x>"
        result.append(
            events_pb2.NormalizedMessage(
                mailbox_id="mbx-1",
                gmail_message_id=f"g-{thread}-{index}",
                gmail_thread_id=f"gt-{thread}",
                rfc_message_id=rfc,
                in_reply_to=previous[-1:],
                references=list(previous),
                direction=common_pb2.DIRECTION_OUTBOUND if outbound else common_pb2.DIRECTION_INBOUND,
                label_ids=["SENT"] if outbound else ["INBOX"],
                participants=[
                    common_pb2.Participant(
                        email="user@gmail.com" if outbound else contact, role=common_pb2.PARTICIPANT_ROLE_FROM
                    ),
                    common_pb2.Participant(
                        email=contact if outbound else "user@gmail.com", role=common_pb2.PARTICIPANT_ROLE_TO
                    ),
                ],
                subject=f"thread {thread}",
                text_body="body",
                internal_time=to_timestamp(at(10 + thread * PER_THREAD + index)),
                source=common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
                connections=[
                    common_pb2.ConnectionSnapshot(
                        connection_id="conn-a",
                        user_id="user-1",
                        location_id="loc-a",
                        state=common_pb2.CONNECTION_STATE_CONNECTED,
                        start_time=to_timestamp(T0),
                    )
                ],
            )
        )
        previous.append(rfc)
    return result


async def count(db: Any, model: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_two_replicas_one_killed_midstream_store_each_message_once_in_one_thread(
    threading_db: Any,
    database_target: Any,
    nats_server: Any,
    jetstream: Any,
    token_keys_value: str,
    tmp_path: Path,
) -> None:
    await declare_streams(jetstream)
    async with threading_db.write() as session:
        for contact_id, email in (("c-carol", "carol@example.com"), ("c-dave", "dave@example.com")):
            record = ContactRecord(
                contact_id, "loc-a", "", (ContactEmail(email, True),), "user-1", T0, 1, False
            )
            await upsert_contact(session, record, now=T0)
    env = {
        "MAILSYNC_NATS_URL": nats_server.url,
        "MAILSYNC_SERVICE_TOKEN_KEYS": token_keys_value,
        "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS": crm_public_keys_value(),
        "MAILSYNC_THREADING_GRPC_PORT": "0",
        "MAILSYNC_THREADING_DATA_DIR": str(tmp_path),
        "MAILSYNC_THREADING_WAIT_DELAY_SECONDS": "0.2",
        "MAILSYNC_THREADING_WAIT_BUDGET_DELIVERIES": "30",
        "MAILSYNC_THREADING_CONSUMER_ACK_WAIT_SECONDS": "2",
        **database_target.env("MAILSYNC_THREADING_"),
    }
    events = [m for thread in range(THREADS) for m in thread_messages(thread)]
    deliveries = events + random.Random(7).sample(events, len(events) // 2)
    random.Random(11).shuffle(deliveries)
    replicas = [start_replica(env), start_replica(env)]
    try:
        for index, event in enumerate(deliveries):
            # Distinct Nats-Msg-Ids for the repeats: JetStream would drop a same-id repeat before threading sees it.
            await publish(
                jetstream, subjects.normalized("mbx-1"), event, msg_id=f"{event.gmail_message_id}#{index}"
            )
            if index == len(deliveries) // 2:
                replicas[0].send_signal(signal.SIGKILL)
                replicas[0].wait(timeout=10)
                replicas[0] = start_replica(env)

        async def all_decided() -> bool:
            return await count(threading_db, SeenMessageRow) == len(events)

        async def all_announced() -> bool:
            return int((await jetstream.stream_info(SYNCED.name)).state.messages) >= len(events)

        # Generous: two replica processes, a SIGKILL and redelivery after ack_wait on a loaded 2-core CI machine.
        await eventually(all_decided, within=120)
        await eventually(all_announced, within=60)
        await asyncio.sleep(1.0)
    finally:
        for replica in replicas:
            replica.send_signal(signal.SIGTERM)
        for replica in replicas:
            try:
                replica.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.kill()
    assert await count(threading_db, MessageRow) == len(events)
    assert await count(threading_db, ThreadRow) == THREADS
    assert await count(threading_db, ThreadMessageRow) == len(events)
    assert int((await jetstream.stream_info(SYNCED.name)).state.messages) == len(events)
