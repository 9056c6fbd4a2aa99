"""Benchmark of ingest's sync pipeline against the Gmail sandbox (its own process) and a real nats-server.

Reports Gmail quota units (the sandbox's per-method counters) and HTTP requests to Gmail (counted on the client's
connections; a batch is one request) per synced message: at steady state (one message at a time, each with its
push and the re-check that follows), for a burst of N messages in one mailbox, and for N messages spread over M
mailboxes. Run `python -m tools.bench_ingest [--messages 1000] [--mailboxes 100] [--steady 30]`; prints a table
and writes var/bench/ingest.json. Bounded: seconds, not minutes, on a laptop.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httplib2
from nats.js.api import AckPolicy, ConsumerConfig

from sandbox.client import AdminClient
from services.ingest import store
from services.ingest.app import MIGRATIONS_DIR
from services.ingest.pipeline import sync_consumer_spec
from services.ingest.scheduler import SyncScheduler
from services.ingest.sync import MailboxSyncer, SyncConfig
from services.ingest.sync_policy import SyncTiming
from services.ingest.work import queue_sync
from services.runtime import streams, subjects
from services.runtime.consumer import Consumer
from services.runtime.db import Database, migrate, open_database
from services.runtime.gmail import GmailApi, GmailEndpoint
from services.runtime.nats_client import connect
from services.runtime.telemetry import configure_telemetry
from tests.fixtures.ingest_world import SandboxDirectory, SandboxTokens
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.sandbox import GmailSandbox, SandboxProcess


class CountingHttp(httplib2.Http):
    """An httplib2 connection that counts the requests it sends (one per batch, as on the wire)."""

    requests = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:
        CountingHttp.requests += 1
        return super().request(*args, **kwargs)


class CountingGmailApi(GmailApi):
    def thread_http(self) -> httplib2.Http:
        http = getattr(self._local, "http", None)
        if http is None:
            http = CountingHttp(timeout=self.endpoint.timeout_seconds)
            self._local.http = http
        return http


@dataclass
class Bench:
    admin: AdminClient
    sandbox: GmailSandbox
    db: Database
    nats: Any
    directory: SandboxDirectory
    tokens: SandboxTokens
    published: Counter[str]

    def connect(self, address: str) -> str:
        self.admin.create_mailbox(address)
        profile = self.admin.mailbox(address)
        from services.ingest.mailboxes import ConnectionInfo, MailboxInfo

        mailbox_id = "mb-" + address.split("@")[0]
        self.directory.mailboxes[mailbox_id] = MailboxInfo(
            mailbox_id,
            address,
            (
                ConnectionInfo(
                    f"c-{mailbox_id}",
                    "u",
                    "loc",
                    "CONNECTED",
                    int(profile["historyId"]),
                    dt.datetime.now(dt.UTC),
                ),
            ),
        )
        self.tokens.grant(mailbox_id, address)
        return mailbox_id

    async def push(self, mailbox_id: str, key: str) -> None:
        await queue_sync(
            self.nats.jetstream(),
            mailbox_id,
            "",
            reason="PUSH",
            msg_id=f"{mailbox_id}:{key}",
            now=dt.datetime.now(dt.UTC),
        )

    async def wait_published(self, total: int, within: float = 300) -> None:
        deadline = time.monotonic() + within
        while sum(self.published.values()) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sum(self.published.values())} of {total} published")
            await asyncio.sleep(0.02)

    async def wait_settled(self, mailbox_ids: list[str], within: float = 60) -> None:
        """Until every mailbox finished its re-check (no pass pending but the safety poll)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with self.db.read() as session:
                rows = [await store.get_sync_row(session, m) for m in mailbox_ids]
            if all(
                r is not None
                and r.last_sync_at is not None
                and r.state == "IDLE"
                and r.next_attempt_reason == "POLL"
                for r in rows
            ):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("mailboxes did not settle")

    def counters(self) -> tuple[int, Counter[str], int]:
        quota = self.admin.quota()
        calls: Counter[str] = Counter()
        for user in quota.get("users", {}).values():
            for method, entry in user.get("methods", {}).items():
                calls[method.removeprefix("gmail.users.")] += int(entry.get("calls", 0))
        return int(quota.get("total_units", 0)), calls, CountingHttp.requests


def measured(
    before: tuple[int, Counter[str], int], after: tuple[int, Counter[str], int], messages: int, seconds: float
) -> dict[str, Any]:
    units = after[0] - before[0]
    requests = after[2] - before[2]
    calls = after[1] - before[1]
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "messages_per_second": round(messages / seconds, 1) if seconds else None,
        "quota_units": units,
        "quota_units_per_message": round(units / messages, 2),
        "http_requests": requests,
        "http_requests_per_message": round(requests / messages, 3),
        "calls": dict(sorted(calls.items())),
    }


async def steady(bench: Bench, rounds: int) -> dict[str, Any]:
    mailbox = bench.connect("steady@example.com")
    await bench.push(mailbox, "warm")
    await bench.wait_settled([mailbox])
    start_count = sum(bench.published.values())
    before, started = bench.counters(), time.monotonic()
    for index in range(rounds):
        await asyncio.to_thread(
            bench.admin.deliver,
            "steady@example.com",
            **{"from": "c@o.test", "to": ["steady@example.com"], "subject": f"m{index}", "body": "hello"},
        )
        await bench.push(mailbox, f"s{index}")
        await bench.wait_published(start_count + index + 1)
        await bench.wait_settled([mailbox])
    return measured(before, bench.counters(), rounds, time.monotonic() - started)


async def burst(bench: Bench, prefix: str, mailboxes: int, messages: int) -> dict[str, Any]:
    ids = [bench.connect(f"{prefix}{i}@example.com") for i in range(mailboxes)]
    for mailbox in ids:
        await bench.push(mailbox, "warm")
    await bench.wait_settled(ids)
    per_mailbox = messages // mailboxes
    for i in range(mailboxes):
        address = f"{prefix}{i}@example.com"
        remaining = per_mailbox
        while remaining:
            copies = min(remaining, 250)
            await asyncio.to_thread(
                bench.admin.deliver,
                address,
                **{
                    "from": "c@o.test",
                    "to": [address],
                    "subject": "burst",
                    "body": "hello",
                    "copies": copies,
                },
            )
            remaining -= copies
    start_count = sum(bench.published.values())
    before, started, cpu_before = bench.counters(), time.monotonic(), time.process_time()
    for mailbox in ids:
        await bench.push(mailbox, "burst")
    await bench.wait_published(start_count + per_mailbox * mailboxes)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_before
    await bench.wait_settled(ids)
    result = measured(before, bench.counters(), per_mailbox * mailboxes, elapsed)
    result["mailboxes"] = mailboxes
    # This process runs the passes (the sandbox and nats-server have their own); the re-checks come later and
    # the settling wait reads every mailbox's row many times over, so both are left out.
    result["cpu_ms_per_message"] = round(cpu * 1000 / (per_mailbox * mailboxes), 3)
    result["note"] = (
        "seconds and CPU until every message was published; quota and requests include the re-check passes"
    )
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # Spans are made and recorded as in a service (exported nowhere, as with OTEL_TRACES_EXPORTER=none): their
    # cost is part of a pass's.
    configure_telemetry("ingest")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    sandbox_process = SandboxProcess().start()
    nats_server = NatsServer(work / "nats")
    try:
        nats_server.start()
        db = open_database(f"sqlite:///{work / 'ingest.db'}")
        await migrate(db, MIGRATIONS_DIR)
        client = await connect(nats_server.url, name="bench-ingest")
        await streams.declare_streams(client.jetstream())
        api = CountingGmailApi(GmailEndpoint(root_url=sandbox_process.url, max_workers=8))
        try:
            return await _measure(args, sandbox_process, db, client, api)
        finally:
            await client.close()
            await api.aclose()
            await db.dispose()
    finally:
        nats_server.stop()
        sandbox_process.stop()


async def _measure(
    args: argparse.Namespace,
    sandbox_process: SandboxProcess,
    db: Database,
    client: Any,
    api: CountingGmailApi,
) -> dict[str, Any]:
    js = client.jetstream()
    admin = AdminClient(sandbox_process.url)
    sandbox = GmailSandbox(url=sandbox_process.url, admin=admin)
    bench = Bench(
        admin,
        sandbox,
        db,
        client,
        SandboxDirectory(),
        SandboxTokens(sandbox, api, cache_seconds=3600),
        Counter(),
    )
    timing = SyncTiming(recheck_delay=dt.timedelta(seconds=0.5), safety_poll_interval=dt.timedelta(hours=1))
    syncer = MailboxSyncer(
        db=db,
        js=js,
        directory=bench.directory,
        tokens=bench.tokens,
        gmail_api=api,
        config=SyncConfig(
            owner="bench", timing=timing, busy_retry_seconds=0.05, min_push_interval=dt.timedelta(seconds=1)
        ),
    )
    workers = [
        Consumer(client, sync_consumer_spec(), syncer.handle, db=db, fetch_timeout=0.2)
        for _ in range(args.workers)
    ]
    scheduler = SyncScheduler(db=db, js=js, timing=timing, interval_seconds=0.1)
    tasks = [asyncio.create_task(w.run()) for w in workers] + [asyncio.create_task(scheduler.run())]
    drain = await js.pull_subscribe(
        subjects.NORMALIZED_ALL,
        durable="bench-drain",
        stream=streams.MESSAGES.name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, filter_subjects=[subjects.NORMALIZED_ALL]),
    )

    async def drain_loop() -> None:
        while True:
            try:
                for message in await drain.fetch(500, timeout=0.2):
                    bench.published[message.headers.get("Nats-Msg-Id", "") if message.headers else ""] += 1
                    await message.ack()
            except Exception:
                await asyncio.sleep(0)

    tasks.append(asyncio.create_task(drain_loop()))
    results: dict[str, Any] = {}
    try:
        results["steady_state"] = await steady(bench, args.steady)
        results["burst_one_mailbox"] = await burst(bench, "one", 1, args.messages)
        results["burst_many_mailboxes"] = await burst(bench, "many", args.mailboxes, args.messages)
    finally:
        for worker in workers:
            worker.stop()
        scheduler.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_ingest", description=__doc__)
    parser.add_argument("--messages", type=int, default=1000, help="messages in each burst")
    parser.add_argument(
        "--mailboxes", type=int, default=100, help="mailboxes the second burst is spread over"
    )
    parser.add_argument("--steady", type=int, default=30, help="messages synced one at a time")
    parser.add_argument("--workers", type=int, default=4, help="sync passes running at once")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    for name, result in results.items():
        print(
            f"{name:22} {result['messages']:5} msgs  {result['seconds']:7.2f} s  "
            f"{result['quota_units_per_message']:6.2f} units/msg  {result['http_requests_per_message']:6.3f} req/msg  "
            f"calls {result['calls']}"
            + (f"  {result['cpu_ms_per_message']} CPU ms/msg" if "cpu_ms_per_message" in result else "")
        )
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=2))
    # The `make bench` convention: the figures as one JSON object, last on stdout.
    print(json.dumps(results))


if __name__ == "__main__":
    main()
