"""Benchmark of the threading service's message path, on SQLite or PostgreSQL.

* drain: a backlog of normalized messages (threads of four, inbound and sent, over many mailboxes, each connected to
  its own location) is published, then one or two real threading service processes (`services.threading`, as
  `make run` starts it, plus a statement counter) drain it. Reported per configuration: messages per second;
  process CPU milliseconds per message of the threading processes, of nats-server and, with PostgreSQL, of its
  server processes (from /proc, from the moment the processes start consuming until every message is stored and
  announced); SQL statements per message; how many deliveries were redelivered (waits) and how many batches were
  decided again after a concurrent change. Configurations: batches of `--batch` messages with one and two
  processes, and one message per transaction (`consumer_batch_size` 1) with one process, on fewer messages.
* stages: the same mix applied in process, batch by batch: milliseconds per message to load the view, decide,
  write and commit, and statements per message.
* list_messages: ListMessages' store queries and proto translation on a location of `--location-messages`
  messages (one conversation of 10,000 of them, the rest in conversations of 100): median and p99 of a page, by
  conversation and by thread, at the start, the middle and the end.

Run with `python -m tools.bench_threading [--database-url URL]`; it starts its own nats-server, prints a summary
and writes var/bench/threading-<backend>.json. With MAILSYNC_BENCH_PROFILE=<prefix> set, each threading process
writes a cProfile of its CPU time to <prefix>.<pid> (much slower: for finding where the time goes, not for figures). The figures before the batched path (main at 4613030, same machine)
are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import logging
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, insert, select, text

from mailsync.v1 import common_pb2, events_pb2
from services.runtime import subjects
from services.runtime.db import Database, ensure_schema, migrate, open_database
from services.runtime.grpc_auth import CrmTokenSigner
from services.runtime.jetstream import publish
from services.runtime.messaging_tables import outbox_table
from services.runtime.nats_client import connect
from services.runtime.settings import CRM_PUBLIC_KEYS_VARIABLE
from services.runtime.streams import MESSAGES, declare_streams
from services.threading import codec
from services.threading.app import MIGRATIONS_DIR
from services.threading.store import reads
from services.threading.store.changes import ChangeSet
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import (
    ConversationRow,
    MailboxCopyRow,
    MessageRow,
    ParticipantRow,
    ThreadMessageRow,
    ThreadRow,
    derived_id,
)
from services.threading.store.operations import PlaceMessage
from services.threading.store.placements import BatchPlacement
from services.threading.store.snapshot import load_view
from tests.fixtures.nats_server import NatsServer

BENCH_ARGS = ["--messages", "2000", "--per-message", "200", "--location-messages", "100000"]

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
CONTACTS_PER_LOCATION = 5
ROOT = Path(__file__).resolve().parent.parent


def event(n: int, run: str, mailboxes: int) -> events_pb2.NormalizedMessage:
    """Message n: mailbox n % mailboxes (connected to location loc-<mailbox>), that mailbox's k-th message, in
    threads of four alternating inbound and sent, with one of the location's contacts."""
    box, k = n % mailboxes, n // mailboxes
    thread, index = divmod(k, 4)
    mailbox = f"mbx-{box}"
    contact = f"contact{thread % CONTACTS_PER_LOCATION}@example{box}.com"
    outbound = index % 2 == 1
    previous = [f"<{run}-{box}-{thread}-{i}@x>" for i in range(index)]
    return events_pb2.NormalizedMessage(
        mailbox_id=mailbox,
        mailbox_email=f"user{box}@gmail.com",
        gmail_message_id=f"{run}-g{n}",
        gmail_thread_id=f"{run}-t{box}-{thread}",
        rfc_message_id=f"<{run}-{box}-{thread}-{index}@x>",
        in_reply_to=previous[-1:],
        references=previous,
        direction=common_pb2.DIRECTION_OUTBOUND if outbound else common_pb2.DIRECTION_INBOUND,
        label_ids=["SENT"] if outbound else ["INBOX", "UNREAD"],
        participants=[
            common_pb2.Participant(
                email=f"user{box}@gmail.com" if outbound else contact, role=common_pb2.PARTICIPANT_ROLE_FROM
            ),
            common_pb2.Participant(
                email=contact if outbound else f"user{box}@gmail.com", role=common_pb2.PARTICIPANT_ROLE_TO
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
                connection_id=f"conn-{box}",
                user_id=f"user-{box}",
                location_id=f"loc-{box}",
                state=common_pb2.CONNECTION_STATE_CONNECTED,
                start_time=codec.to_timestamp(T0 - dt.timedelta(days=1)),
            )
        ],
    )


@dataclass(frozen=True)
class Target:
    """A fresh, migrated database with the contacts of every location."""

    url: str
    schema: str | None

    def open(self) -> Database:
        return open_database(self.url, schema=self.schema)

    def env(self) -> dict[str, str]:
        values = {"MAILSYNC_THREADING_DATABASE_URL": self.url}
        if self.schema:
            values["MAILSYNC_THREADING_DATABASE_SCHEMA"] = self.schema
        return values


async def fresh_target(url: str, folder: Path, mailboxes: int) -> Target:
    schema = None
    if url.startswith("sqlite"):
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
    db = open_database(url, schema=schema)
    try:
        await ensure_schema(db)
        await migrate(db, MIGRATIONS_DIR)
        async with db.write() as session:
            for box in range(mailboxes):
                for c in range(CONTACTS_PER_LOCATION):
                    email = ContactEmail(f"contact{c}@example{box}.com", True)
                    record = ContactRecord(f"c{c}", f"loc-{box}", "", (email,), f"user-{box}", T0, 1, False)
                    await upsert_contact(session, record, now=T0)
    finally:
        await db.dispose()
    return Target(url, schema)


async def drop(target: Target) -> None:
    if target.schema:
        db = target.open()
        async with db.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{target.schema}" CASCADE'))
        await db.dispose()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_server_cpu_seconds() -> float:
    """CPU of the PostgreSQL server processes on this machine (0 with SQLite, which runs inside threading)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in ("postgres", "postmaster"):
                total += process_cpu_seconds(int(comm.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


def _nats_cpu(nats: NatsServer) -> float:
    assert nats.process is not None
    return process_cpu_seconds(nats.process.pid)


class Worker:
    """A threading service process (the real composition root) that counts its SQL statements. It starts
    completely (migrations, gRPC, NATS) and then waits for `go()` before its consumers run, so what is measured
    after `go()` is the message path alone."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        name = uuid.uuid4().hex[:6]
        self._stats = folder / f"worker-{name}.json"
        self._log = folder / f"worker-{name}.log"
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.bench_threading", "worker", str(self._stats)],
                cwd=ROOT,
                env={**os.environ, **env, "MAILSYNC_THREADING_DATA_DIR": str(folder / f"data-{name}")},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._answers = 0

    def _answer(self) -> dict[str, int]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited: {self._log.read_text()[-2000:]}")
            try:
                answer = json.loads(self._stats.read_text())
                if answer["answers"] > self._answers:
                    self._answers = answer["answers"]
                    return dict(answer)
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"the worker did not answer: {self._log.read_text()[-2000:]}")

    def ready(self) -> dict[str, int]:
        """Waits until the service is up (consumers not started yet); returns its counters so far."""
        return self._answer()

    def go(self) -> None:
        self.process.send_signal(signal.SIGUSR2)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def counters(self) -> dict[str, int]:
        """Asks the worker for its counters (SIGUSR1: statements, batches decided again) and waits for them."""
        self.process.send_signal(signal.SIGUSR1)
        return self._answer()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_worker(stats_path: str) -> None:
    """`python -m tools.bench_threading worker <stats file>`: the threading service, counting statements."""
    from sqlalchemy.engine import Engine

    from services.runtime.logging import configure_logging
    from services.runtime.service import ServiceComponents, serve
    from services.threading.app import build
    from services.threading.settings import ThreadingSettings

    counted = {"statements": 0, "answers": 0, "batches_decided_again": 0}

    class CountRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counted["batches_decided_again"] += 1

    retries = logging.getLogger("services.threading.sync")

    def count(*_args: Any) -> None:
        counted["statements"] += 1

    sqlalchemy_event.listen(Engine, "before_cursor_execute", count)

    def report() -> None:
        counted["answers"] += 1
        target = Path(stats_path)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(counted))
        temporary.replace(target)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, report)
        loop.add_signal_handler(signal.SIGUSR2, go.set)
        configure_logging("WARNING")
        # MessageSync logs (INFO) each batch it decides again after a concurrent change.
        retries.setLevel(logging.INFO)
        retries.addHandler(CountRetries(logging.INFO))

        async def build_then_wait(settings: ThreadingSettings) -> ServiceComponents:
            components = await build(settings)
            report()
            await go.wait()
            return components

        return await serve(ThreadingSettings.load(), build_then_wait)

    profile = os.environ.get("MAILSYNC_BENCH_PROFILE")
    if not profile:
        sys.exit(asyncio.run(main()))
    import cProfile

    profiler = cProfile.Profile(time.process_time)
    code = profiler.runcall(asyncio.run, main())
    profiler.dump_stats(f"{profile}.{os.getpid()}")
    sys.exit(code)


async def _count(db: Database, statement: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(statement) or 0)


async def drain(
    target: Target, nats: NatsServer, folder: Path, *, count: int, mailboxes: int, processes: int, batch: int
) -> dict[str, float]:
    """Publishes `count` messages, then lets `processes` threading processes drain them."""
    db = target.open()
    client = await connect(nats.url, name="bench")
    js = client.jetstream()
    run = uuid.uuid4().hex[:6]
    workers: list[Worker] = []
    try:
        await declare_streams(js)
        await js.purge_stream(MESSAGES.name)
        for n in range(count):
            await publish(
                js, subjects.normalized(f"mbx-{n % mailboxes}"), event(n, run, mailboxes), msg_id=f"{run}-{n}"
            )
        keys = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {
            **target.env(),
            "MAILSYNC_NATS_URL": nats.url,
            "MAILSYNC_SERVICE_TOKEN_KEYS": f"bench={keys}",
            CRM_PUBLIC_KEYS_VARIABLE: CrmTokenSigner.generate("crm-bench").public_keys_text(),
            "MAILSYNC_THREADING_GRPC_PORT": "0",
            "MAILSYNC_THREADING_CONSUMER_BATCH_SIZE": str(batch),
        }
        workers = [Worker(folder, env) for _ in range(processes)]
        counters_start = [w.ready() for w in workers]
        stored_query = select(func.count()).select_from(MessageRow)
        pending_query = (
            select(func.count()).select_from(outbox_table).where(outbox_table.c.published_at.is_(None))
        )
        cpu_start = [w.cpu_seconds() for w in workers]
        nats_start = _nats_cpu(nats)
        database_start = database_server_cpu_seconds()
        started = time.perf_counter()
        for worker in workers:
            worker.go()
        deadline = time.monotonic() + 600
        while await _count(db, stored_query) < count or await _count(db, pending_query) > 0:
            if time.monotonic() > deadline or any(w.process.poll() is not None for w in workers):
                raise RuntimeError("the threading processes did not finish within 600 s")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = sum(w.cpu_seconds() - c for w, c in zip(workers, cpu_start, strict=True))

        nats_cpu = _nats_cpu(nats) - nats_start
        database_cpu = database_server_cpu_seconds() - database_start
        counters_end = [w.counters() for w in workers]
        statements, again = (
            sum(end[name] - start[name] for start, end in zip(counters_start, counters_end, strict=True))
            for name in ("statements", "batches_decided_again")
        )
        info = await js.consumer_info(MESSAGES.name, "threading-messages")
        return {
            "messages": count,
            "per_second": round(count / elapsed, 1),
            "threading_cpu_ms_per_message": round(cpu / count * 1000, 3),
            "nats_cpu_ms_per_message": round(nats_cpu / count * 1000, 3),
            "database_server_cpu_ms_per_message": round(database_cpu / count * 1000, 3),
            "statements_per_message": round(statements / count, 2),
            "batches_decided_again": again,
            "redeliveries": int(info.num_redelivered),
        }
    finally:
        for worker in workers:
            worker.stop()
        await client.close()
        await db.dispose()


async def stages(target: Target, *, count: int, mailboxes: int, batch: int) -> dict[str, float]:
    """Milliseconds per message in each stage of the batched path, in process (no NATS), and statements."""
    db = target.open()
    run = uuid.uuid4().hex[:6]
    payloads = [event(n, run, mailboxes).SerializeToString() for n in range(count)]
    times = {"decode": 0.0, "load": 0.0, "decide": 0.0, "write": 0.0, "commit": 0.0}
    statements = [0]

    def count_statement(*_args: Any) -> None:
        statements[0] += 1

    sqlalchemy_event.listen(db.engine.sync_engine, "before_cursor_execute", count_statement)
    cpu = time.process_time()
    try:
        for start in range(0, count, batch):
            t = time.perf_counter()
            operations = []
            for payload in payloads[start : start + batch]:
                parsed = events_pb2.NormalizedMessage.FromString(payload)
                operations.append(PlaceMessage(codec.incoming_message(parsed), codec.content_of(parsed)))
            times["decode"] += time.perf_counter() - t
            async with db.write() as session:
                conn = await session.connection()
                t = time.perf_counter()
                view = await load_view(conn, operations)
                times["load"] += time.perf_counter() - t
                t = time.perf_counter()
                changes = ChangeSet()
                BatchPlacement(view, changes, now=T0).apply_all(operations)
                times["decide"] += time.perf_counter() - t
                t = time.perf_counter()
                await changes.flush(conn)
                times["write"] += time.perf_counter() - t
                t = time.perf_counter()
            times["commit"] += time.perf_counter() - t
        cpu = time.process_time() - cpu
    finally:
        await db.dispose()
    result = {f"{k}_ms_per_message": round(v / count * 1000, 3) for k, v in times.items()}
    result["process_cpu_ms_per_message"] = round(cpu / count * 1000, 3)
    result["statements_per_message"] = round(statements[0] / count, 2)
    return result


def _chunks(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(start + size, total))


async def list_messages_latency(target: Target, total: int, samples_per_case: int = 200) -> dict[str, Any]:
    """ListMessages (the servicer's queries and proto translation) on a location of `total` messages."""
    db = target.open()
    location = "loc-big"
    big = min(10_000, total)

    def conversation_of(n: int) -> tuple[str, str]:
        if n < big:
            return derived_id("conversation", location, "c-big"), derived_id("thread", location, "t-big")
        group = (n - big) // 100
        return derived_id("conversation", location, f"c{group}"), derived_id("thread", location, f"t{group}")

    try:
        async with db.write() as session:
            conversations = {conversation_of(n) for n in range(0, total, 100)} | {conversation_of(0)}
            await session.execute(
                insert(ConversationRow),
                [
                    dict(
                        conversation_id=c,
                        location_id=location,
                        contact_id=c,
                        create_time=T0,
                        last_message_time=T0,
                        message_count=1,
                        thread_count=1,
                    )
                    for c, _ in conversations
                ],
            )
            await session.execute(
                insert(ThreadRow),
                [
                    dict(thread_id=t, location_id=location, conversation_id=c, origin="gmail", create_time=T0)
                    for c, t in conversations
                ],
            )
        for chunk in _chunks(total, 2000):
            async with db.write() as session:
                rows = [(n, f"m-{n:07d}", *conversation_of(n)) for n in chunk]
                await session.execute(
                    insert(MessageRow),
                    [
                        dict(
                            message_id=mid,
                            location_id=location,
                            dedup_key=f"mid:<{mid}@x>",
                            conversation_id=c,
                            contact_id=c,
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
                        for n, mid, c, _ in rows
                    ],
                )
                await session.execute(
                    insert(ThreadMessageRow),
                    [
                        dict(thread_id=t, message_id=mid, message_time=T0 + dt.timedelta(minutes=n))
                        for n, mid, _, t in rows
                    ],
                )
                await session.execute(
                    insert(ParticipantRow),
                    [
                        dict(message_id=mid, role="FROM", position=0, email="c0@example.com", display_name="")
                        for _, mid, _, _ in rows
                    ],
                )
                await session.execute(
                    insert(MailboxCopyRow),
                    [
                        dict(
                            message_id=mid,
                            mailbox_id="mbx-big",
                            location_id=location,
                            gmail_message_id=f"g-{mid}",
                            gmail_thread_id="gt",
                            labels=["INBOX"],
                            unread=False,
                            trashed=False,
                            deleted=False,
                            state_history_id=0,
                            update_time=T0,
                        )
                        for _, mid, _, _ in rows
                    ],
                )
        if db.dialect == "postgresql":
            # Planner statistics, as autovacuum would have after a bulk load.
            async with db.engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
        big_conversation, big_thread = conversation_of(0)
        small_conversation, small_thread = conversation_of(total - 1)
        cases = {
            "conversation_of_10000": ("conversation", big_conversation, big),
            "thread_of_10000": ("thread", big_thread, big),
            "conversation_of_100": ("conversation", small_conversation, 100),
            "thread_of_100": ("thread", small_thread, 100),
        }
        # Where a page starts: the first message, the middle and the last page of each list.
        starts: dict[str, list[Any]] = {}
        async with db.read() as session:
            for name, (kind, key, size) in cases.items():
                starts[name] = [None] + [
                    await _cursor_at(session, kind, key, offset) for offset in (size // 2, max(size - 50, 1))
                ]
        samples: dict[str, list[float]] = {name: [] for name in cases}
        rng = random.Random(5)
        for _ in range(samples_per_case):
            for name, (kind, key, _size) in cases.items():
                after = rng.choice(starts[name])
                t = time.perf_counter()
                async with db.read() as session:
                    if kind == "conversation":
                        await reads.get_conversation(session, location, key)
                    else:
                        await reads.thread_in_location(session, location, key)
                    page = await _page(session, location, kind, key, 51, after)
                [codec.message_proto(m) for m in page[:50]]
                samples[name].append((time.perf_counter() - t) * 1000)
    finally:
        await db.dispose()
    return {
        "messages_in_location": total,
        "samples_per_case": samples_per_case,
        **{
            name: {
                "median_ms": round(statistics.median(values), 2),
                "p99_ms": round(statistics.quantiles(values, n=100)[98], 2),
            }
            for name, values in samples.items()
        },
    }


async def _cursor_at(session: Any, kind: str, key: str, offset: int) -> tuple[dt.datetime, str]:
    """The (time, id) of the message at `offset` in reading order: a page token's content."""
    if kind == "conversation":
        query = (
            select(MessageRow.message_time, MessageRow.message_id)
            .where(MessageRow.conversation_id == key)
            .order_by(MessageRow.message_time, MessageRow.message_id)
        )
    else:
        query = (
            select(ThreadMessageRow.message_time, ThreadMessageRow.message_id)
            .where(ThreadMessageRow.thread_id == key)
            .order_by(ThreadMessageRow.message_time, ThreadMessageRow.message_id)
        )
    when, message_id = (await session.execute(query.offset(offset - 1).limit(1))).one()
    return when, message_id


async def _page(session: Any, location: str, kind: str, key: str, limit: int, after: Any) -> list[Any]:
    if kind == "conversation":
        return await reads.list_messages(session, location, conversation_id=key, limit=limit, after=after)
    return await reads.list_messages(session, location, thread_id=key, limit=limit, after=after)


async def main(args: argparse.Namespace, url: str, folder: Path) -> dict[str, Any]:
    backend = "sqlite" if url.startswith("sqlite") else "postgresql"
    result: dict[str, Any] = {
        "backend": backend,
        "mailboxes": args.mailboxes,
        "batch": args.batch,
        "machine_cpus": os.cpu_count(),
        # Other sessions share the machine: the load says how much the wall-clock figures are stretched.
        "load_average_at_start": os.getloadavg()[0],
    }
    nats = NatsServer(folder / "nats")
    nats.start()
    try:
        configurations = [
            ("batched_one_process", args.messages, 1, args.batch),
            ("batched_two_processes", args.messages, 2, args.batch),
            ("one_per_transaction_one_process", args.per_message, 1, 1),
        ]
        for name, count, processes, batch in configurations:
            target = await fresh_target(url, folder, args.mailboxes)
            try:
                result[name] = await drain(
                    target,
                    nats,
                    folder,
                    count=count,
                    mailboxes=args.mailboxes,
                    processes=processes,
                    batch=batch,
                )
            finally:
                await drop(target)
            print(name, json.dumps(result[name]), flush=True)
        target = await fresh_target(url, folder, args.mailboxes)
        try:
            result["stages_in_process"] = await stages(
                target, count=args.messages, mailboxes=args.mailboxes, batch=args.batch
            )
        finally:
            await drop(target)
        print("stages_in_process", json.dumps(result["stages_in_process"]), flush=True)
        one, two = result["batched_one_process"], result["batched_two_processes"]
        result["two_processes_speedup"] = round(two["per_second"] / one["per_second"], 2)
        result["batched_speedup_over_one_per_transaction"] = round(
            one["per_second"] / result["one_per_transaction_one_process"]["per_second"], 1
        )
    finally:
        nats.stop()
    if args.location_messages:
        target = await fresh_target(url, folder, 1)
        try:
            result["list_messages"] = await list_messages_latency(target, args.location_messages)
        finally:
            await drop(target)
        print("list_messages", json.dumps(result["list_messages"]), flush=True)
    result["load_average_at_end"] = os.getloadavg()[0]
    return result


def cli() -> None:
    if sys.argv[1:2] == ["worker"]:
        run_worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary folder")
    parser.add_argument(
        "--messages", type=int, default=4000, help="backlog drained by the batched configurations"
    )
    parser.add_argument(
        "--per-message", type=int, default=400, help="backlog for one message per transaction"
    )
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument(
        "--batch", type=int, default=256, help="consumer_batch_size of the batched configurations"
    )
    parser.add_argument(
        "--location-messages",
        type=int,
        default=100_000,
        help="messages in the ListMessages location (0: skip)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
        result = asyncio.run(main(args, url, folder))
    out = ROOT / "var" / "bench" / f"threading-{result['backend']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
