"""Ingest sync workers as real processes: killed with SIGKILL in the middle of a burst, and two of them on the
same mailboxes. Every publish attempt is counted from the workers' own reports (JetStream's de-duplication would
hide a second publish), next to what a consumer of the stream actually received."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from services.ingest.work import queue_sync
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.ingest_worker_program import REPORT_SUBJECT
from tests.fixtures.ingest_world import IngestWorld
from tests.fixtures.messaging import eventually, wait_for_exit

ROOT = Path(__file__).resolve().parents[3]


class Reports:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def collect(self, message: Any) -> None:
        self.items.append(json.loads(message.data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item["kind"] == kind]


def write_config(
    world: IngestWorld,
    nats_url: str,
    target: DatabaseTarget,
    path: Path,
    owner: str,
    lease_seconds: float = 3,
) -> Path:
    config = {
        "owner": owner,
        "nats_url": nats_url,
        "database_url": target.url,
        "database_schema": target.schema or "",
        "sandbox_url": world.sandbox.url,
        "lease_seconds": lease_seconds,
        "fetch_window": 50,
        "refresh_tokens": {mid: world.tokens.refresh_token(mid) for mid in world.directory.mailboxes},
        "mailboxes": [
            {
                "mailbox_id": m.mailbox_id,
                "email": m.email,
                "connections": [
                    {
                        "connection_id": c.connection_id,
                        "user_id": c.user_id,
                        "location_id": c.location_id,
                        "state": c.state,
                        "start_history_id": c.start_history_id,
                        "start_time": c.start_time.isoformat(),
                    }
                    for c in m.connections
                ],
            }
            for m in world.directory.mailboxes.values()
        ],
    }
    path.write_text(json.dumps(config))
    return path


def start_worker(config: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.ingest_worker_program", str(config)],
        cwd=ROOT,
        env={**os.environ, **env},
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def queue(world: IngestWorld, mailbox_id: str, key: str) -> None:
    await queue_sync(
        world.js, mailbox_id, "", reason="PUSH", msg_id=f"t:{mailbox_id}:{key}", now=dt.datetime.now(dt.UTC)
    )


async def test_worker_killed_mid_burst_and_restarted_loses_nothing_and_publishes_nothing_twice(
    ingest_world: IngestWorld, nats_server: Any, database_target: DatabaseTarget, tmp_path: Path
) -> None:
    world = ingest_world
    reports = Reports()
    await world.nats.subscribe(REPORT_SUBJECT, cb=reports.collect)
    world.sandbox.create_mailbox("alice@example.com")
    mailbox = world.connect("alice@example.com")
    delivered = world.deliver("alice@example.com", copies=300)
    config = write_config(world, nats_server.url, database_target, tmp_path / "worker.json", "worker")
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    # SIGKILL after the first window's publishes were acknowledged, before the ledger recorded them: the worst spot.
    crashing = start_worker(
        config,
        MAILSYNC_FAULTS="ingest.sync.after_publish:once",
        MAILSYNC_FAULTS_STATE_DIR=str(faults_dir),
    )
    try:
        await queue(world, mailbox.mailbox_id, "burst")
        assert await wait_for_exit(crashing, within=120) == -9
        published_before_crash = len(reports.of("ack"))
        restarted = start_worker(config)
        try:

            async def all_received() -> bool:
                return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

            await eventually(all_received, within=120)
            await asyncio.sleep(0.5)
        finally:
            stop_worker(restarted)
    finally:
        stop_worker(crashing)

    received = world.recorder.recorded.normalized_ids()
    assert received == dict.fromkeys(delivered, 1)
    attempts = Counter(r["gmail_id"] for r in reports.of("attempt"))
    accepted = Counter(r["gmail_id"] for r in reports.of("ack") if not r["duplicate"])
    repeated = {gmail_id for gmail_id, count in attempts.items() if count > 1}
    assert set(attempts) == set(delivered)
    assert accepted == dict.fromkeys(delivered, 1), "a message was published (accepted by JetStream) twice"
    # The crash did hit between publish and ledger: those messages were attempted again after the restart, and
    # every repeat was recognised by its Nats-Msg-Id instead of reaching the stream a second time.
    assert 0 < published_before_crash and repeated
    assert all(
        sum(1 for r in reports.of("ack") if r["gmail_id"] == gmail_id and r["duplicate"])
        == attempts[gmail_id] - 1
        for gmail_id in repeated
    )


async def test_two_worker_processes_never_process_one_mailbox_at_once(
    ingest_world: IngestWorld, nats_server: Any, database_target: DatabaseTarget, tmp_path: Path
) -> None:
    world = ingest_world
    reports = Reports()
    await world.nats.subscribe(REPORT_SUBJECT, cb=reports.collect)
    addresses = [f"user{i}@example.com" for i in range(4)]
    for address in addresses:
        world.sandbox.create_mailbox(address)
        world.connect(address)
    world.sandbox.admin.set_faults("gmail.users.messages.get", latency_ms=20)
    # Nobody is killed here, so a lease never has to expire: a pass starved longer than a short lease on a loaded
    # machine would be taken over by design (fencing keeps its writes out), which is not what this test asks.
    config_a = write_config(world, nats_server.url, database_target, tmp_path / "a.json", "process-a", 60)
    config_b = write_config(world, nats_server.url, database_target, tmp_path / "b.json", "process-b", 60)
    processes = [start_worker(config_a), start_worker(config_b)]
    delivered: list[str] = []
    try:

        async def both_ready() -> bool:
            return len(reports.of("ready")) == 2

        await eventually(both_ready, within=120)
        for round_number in range(10):
            for address in addresses:
                delivered += world.deliver(address, copies=5)
                mailbox_id = "mb-" + address.split("@")[0]
                await queue(world, mailbox_id, f"round-{round_number}")
            await asyncio.sleep(0.3)

        async def all_received() -> bool:
            return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

        await eventually(all_received, within=120)
    finally:
        for process in processes:
            stop_worker(process)
        world.sandbox.admin.clear_faults()

    passes: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    begins: dict[tuple[str, str], int] = {}
    for report in reports.items:
        if report["kind"] == "begin":
            begins[(report["owner"], report["mailbox_id"])] = report["t"]
        elif report["kind"] == "end":
            start = begins.pop((report["owner"], report["mailbox_id"]))
            passes[report["mailbox_id"]].append((start, report["t"], report["owner"]))
    owners = {owner for intervals in passes.values() for _, _, owner in intervals}
    assert len(owners) == 2, (len(reports.items), Counter(r["kind"] for r in reports.items))
    for mailbox_id, intervals in passes.items():
        intervals.sort()
        for (_, end, _), (next_start, _, _) in itertools.pairwise(intervals):
            assert next_start >= end, f"two passes over {mailbox_id} overlapped"
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
