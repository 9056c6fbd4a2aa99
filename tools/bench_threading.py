"""Benchmark of the threading service: messages applied per second (one consumer, then two) on SQLite or
PostgreSQL, with where the time goes (decode, rules, database, NATS and ack), and ListMessages latency on a
conversation of 10,000 messages.

Run with `python -m tools.bench_threading [--database-url URL] [--messages N]`; starts its own nats-server, prints
a summary and writes var/bench/threading-<backend>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import insert, text

from mailsync.v1 import common_pb2, events_pb2
from services.runtime import subjects
from services.runtime.consumer import Consumer
from services.runtime.db import Database, ensure_schema, migrate, open_database
from services.runtime.jetstream import publish
from services.runtime.nats_client import connect
from services.runtime.outbox import OutboxRelay
from services.runtime.streams import declare_streams
from services.threading import codec
from services.threading.app import MIGRATIONS_DIR
from services.threading.consumers import ThreadingHandlers, WaitPolicy, message_consumer_spec, outbox_events
from services.threading.domain.model import message_key
from services.threading.domain.rules import decide
from services.threading.store import reads
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import (
    ConversationRow,
    MessageRow,
    ParticipantRow,
    ThreadMessageRow,
    ThreadRow,
    derived_id,
)
from services.threading.store.placements import load_knowledge, record_decision
from services.threading.sync import MessageSync
from tests.fixtures.nats_server import NatsServer

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
CONTACTS = 50


def event(n: int, run: str) -> events_pb2.NormalizedMessage:
    """Message n of a realistic mix: threads of four, inbound and sent, from one of 50 assigned contacts."""
    thread, index = divmod(n, 4)
    contact = f"contact{thread % CONTACTS}@example.com"
    outbound = index % 2 == 1
    previous = [f"<{run}-{thread}-{i}@x>" for i in range(index)]
    return events_pb2.NormalizedMessage(
        mailbox_id="mbx-1",
        gmail_message_id=f"{run}-g{n}",
        gmail_thread_id=f"{run}-t{thread}",
        rfc_message_id=f"<{run}-{thread}-{index}@x>",
        in_reply_to=previous[-1:],
        references=previous,
        direction=common_pb2.DIRECTION_OUTBOUND if outbound else common_pb2.DIRECTION_INBOUND,
        label_ids=["SENT"] if outbound else ["INBOX", "UNREAD"],
        participants=[
            common_pb2.Participant(
                email="user@gmail.com" if outbound else contact, role=common_pb2.PARTICIPANT_ROLE_FROM
            ),
            common_pb2.Participant(
                email=contact if outbound else "user@gmail.com", role=common_pb2.PARTICIPANT_ROLE_TO
            ),
            common_pb2.Participant(email="cc@example.com", role=common_pb2.PARTICIPANT_ROLE_CC),
        ],
        subject=f"Thread {thread}",
        text_body="Hello,\n" + "a line of an ordinary email body\n" * 40,
        html_body="<p>" + "a line of an ordinary email body<br>" * 40 + "</p>",
        internal_time=codec.to_timestamp(T0 + dt.timedelta(seconds=n)),
        source=common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
        connections=[
            common_pb2.ConnectionSnapshot(
                connection_id="conn-1",
                user_id="user-1",
                location_id="loc-a",
                state=common_pb2.CONNECTION_STATE_CONNECTED,
                start_time=codec.to_timestamp(T0 - dt.timedelta(days=1)),
            )
        ],
    )


async def fresh_database(url: str) -> Database:
    schema = None
    if url.startswith("sqlite"):
        # A new file for every phase, next to the one named.
        url = url.rsplit("/", 1)[0] + f"/bench-{uuid.uuid4().hex[:8]}.db"
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
    db = open_database(url, schema=schema)
    await ensure_schema(db)
    await migrate(db, MIGRATIONS_DIR)
    async with db.write() as session:
        for c in range(CONTACTS):
            record = ContactRecord(
                f"c{c}", "loc-a", "", (ContactEmail(f"contact{c}@example.com", True),), "user-1", T0, 1, False
            )
            await upsert_contact(session, record, now=T0)
    return db


async def drop(db: Database) -> None:
    if db.schema:
        async with db.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{db.schema}" CASCADE'))
    await db.dispose()


async def breakdown(url: str, count: int) -> dict[str, float]:
    """Per-message time in each stage, in process (no NATS), in milliseconds; with the statements per message and
    the round trip of a trivial statement on this machine, since statement round trips dominate the database time."""
    db = await fresh_database(url)
    payloads = [event(n, "b").SerializeToString() for n in range(count)]
    stages = {"decode": 0.0, "load": 0.0, "rules": 0.0, "write": 0.0, "commit": 0.0}
    statements = [0]

    def count_statement(*_args: Any) -> None:
        statements[0] += 1

    sqlalchemy_event.listen(db.engine.sync_engine, "before_cursor_execute", count_statement)
    try:
        async with db.read() as session:
            t = time.perf_counter()
            for _ in range(100):
                await session.execute(text("SELECT 1"))
            round_trip = (time.perf_counter() - t) / 100
        statements[0] = 0
        for payload in payloads:
            t = time.perf_counter()
            parsed = events_pb2.NormalizedMessage.FromString(payload)
            message, content = codec.incoming_message(parsed), codec.content_of(parsed)
            stages["decode"] += time.perf_counter() - t
            async with db.write() as session:
                t = time.perf_counter()
                knowledge = await load_knowledge(session, message, message_key(message))
                stages["load"] += time.perf_counter() - t
                t = time.perf_counter()
                decision = decide(message, knowledge, may_wait=False)
                stages["rules"] += time.perf_counter() - t
                t = time.perf_counter()
                await record_decision(session, message, content, decision, now=T0)
                stages["write"] += time.perf_counter() - t
                t = time.perf_counter()
            stages["commit"] += time.perf_counter() - t
    finally:
        await drop(db)
    result = {k: round(v / count * 1000, 3) for k, v in stages.items()}
    result["statements_per_message"] = round(statements[0] / count, 1)
    result["select_1_round_trip"] = round(round_trip * 1000, 3)
    return result


async def throughput(url: str, nats_url: str, count: int, consumers: int) -> float:
    """Messages per second from the first publish until every message is stored, through JetStream consumers."""
    db = await fresh_database(url)
    client = await connect(nats_url, name="bench")
    js = client.jetstream()
    run = uuid.uuid4().hex[:6]
    try:
        await declare_streams(js)
        await js.purge_stream("MAILSYNC_MESSAGES")
        policy = WaitPolicy(budget=0)
        handlers = ThreadingHandlers(MessageSync(db, events=outbox_events()), policy=policy)
        runners = [
            Consumer(
                client, message_consumer_spec(policy), handlers.handle_message_event, db=db, fetch_timeout=0.2
            )
            for _ in range(consumers)
        ]
        relay = OutboxRelay(db, js, poll_interval=0.2)
        for n in range(count):
            await publish(js, subjects.normalized("mbx-1"), event(n, run), msg_id=f"{run}-{n}")
        started = time.perf_counter()
        tasks = [asyncio.create_task(r.run()) for r in runners] + [asyncio.create_task(relay.run())]
        while True:
            async with db.read() as session:
                stored = await session.scalar(text("SELECT count(*) FROM messages"))
            if stored >= count:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        for r in runners:
            r.stop()
        relay.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await js.delete_consumer("MAILSYNC_MESSAGES", "threading-messages")
    finally:
        await client.close()
        await drop(db)
    return round(count / elapsed, 1)


async def list_messages_latency(url: str, size: int = 10_000) -> dict[str, float]:
    """ListMessages (store query + proto translation) on one conversation of `size` messages, in milliseconds."""
    db = await fresh_database(url)
    conversation_id = derived_id("conversation", "loc-a", "c0")
    thread_id = derived_id("thread", "loc-a", "gmail:mbx-1:big")
    try:
        async with db.write() as session:
            await session.execute(
                insert(ConversationRow).values(
                    conversation_id=conversation_id,
                    location_id="loc-a",
                    contact_id="c0",
                    create_time=T0,
                    last_message_time=T0,
                    message_count=size,
                    thread_count=1,
                )
            )
            await session.execute(
                insert(ThreadRow).values(
                    thread_id=thread_id,
                    location_id="loc-a",
                    conversation_id=conversation_id,
                    origin="gmail",
                    create_time=T0,
                )
            )
            for start in range(0, size, 1000):
                ids = [(n, f"m-{n:06d}") for n in range(start, min(start + 1000, size))]
                await session.execute(
                    insert(MessageRow),
                    [
                        dict(
                            message_id=mid,
                            location_id="loc-a",
                            dedup_key=f"mid:<{mid}@x>",
                            conversation_id=conversation_id,
                            contact_id="c0",
                            rfc_message_id=f"<{mid}@x>",
                            direction="INBOUND",
                            source="GMAIL_SYNC",
                            subject="s",
                            text_body="body " * 200,
                            html_body="",
                            body_truncated=False,
                            message_time=T0 + dt.timedelta(minutes=n),
                            rule_id="R2",
                            send_id="",
                            send_pending=False,
                            create_time=T0,
                        )
                        for n, mid in ids
                    ],
                )
                await session.execute(
                    insert(ThreadMessageRow),
                    [
                        dict(thread_id=thread_id, message_id=mid, message_time=T0 + dt.timedelta(minutes=n))
                        for n, mid in ids
                    ],
                )
                await session.execute(
                    insert(ParticipantRow),
                    [
                        dict(message_id=mid, role="FROM", position=0, email="c0@example.com", display_name="")
                        for _, mid in ids
                    ],
                )
        if db.dialect == "postgresql":
            # Planner statistics, as autovacuum would have after a bulk load.
            async with db.engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
        samples: dict[str, list[float]] = {"first_page": [], "middle_page": [], "last_page": []}
        async with db.read() as session:
            middle = await reads.list_messages(session, "loc-a", conversation_id=conversation_id, limit=5000)
            late = await reads.list_messages(session, "loc-a", conversation_id=conversation_id, limit=9950)
        after = {
            "first_page": None,
            "middle_page": (middle[-1].message_time, middle[-1].message_id),
            "last_page": (late[-1].message_time, late[-1].message_id),
        }
        for _ in range(20):
            for name, token in after.items():
                t = time.perf_counter()
                async with db.read() as session:
                    page = await reads.list_messages(
                        session, "loc-a", conversation_id=conversation_id, limit=51, after=token
                    )
                [codec.message_proto(m) for m in page[:50]]
                samples[name].append((time.perf_counter() - t) * 1000)
    finally:
        await drop(db)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


async def main(url: str, count: int) -> dict[str, Any]:
    backend = "sqlite" if url.startswith("sqlite") else "postgresql"
    with tempfile.TemporaryDirectory() as folder:
        nats = NatsServer(Path(folder) / "nats")
        nats.start()
        try:
            result = {
                "backend": backend,
                "messages": count,
                "breakdown_ms_per_message": await breakdown(url, min(count, 500)),
                "applied_per_second_one_consumer": await throughput(url, nats.url, count, 1),
                "applied_per_second_two_consumers": await throughput(url, nats.url, count, 2),
                "list_messages_10k_median_ms": await list_messages_latency(url),
            }
        finally:
            nats.stop()
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'bench.db'}"
        result = asyncio.run(main(url, args.messages))
    out = Path("var/bench") / f"threading-{result['backend']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
