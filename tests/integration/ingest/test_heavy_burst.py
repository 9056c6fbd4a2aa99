"""A burst of heavy mail on one mailbox (issue 16): 25 mails with a 10 MB attachment each, arriving together, are all
published, each once, by a running ingest service whose normalization runs in its worker pool, with no pass failing
and the service's gRPC health SERVING again once the burst is through: the burst slows the mailbox, it never stops
it (before the worker pool, every pass failed with a publish timeout and none of the 25 was ever published).

The health checks come from a thread of their own (a blocking channel), so a stalled event loop in the service
shows as a check that does not answer in time, not as a test that merely waits along with it. The Gmail sandbox
runs as its own process here: serving 25 x 14 MB from inside the test process would compete for the same
interpreter lock as the service under test."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox.client import AdminClient
from services.ingest import store
from services.ingest.work import queue_sync
from tests.fixtures.ingest_world import IngestWorld, RunningIngest
from tests.fixtures.sandbox import GmailSandbox, SandboxProcess

# 350 MB through the sandbox, the Google client and the workers: minutes on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(900)

ALICE = "alice@example.com"
MAILS = 25
ATTACHMENT_BYTES = 10 * 1024 * 1024
# Generous on a loaded 2-core machine; the loop stalled for 11 s and more before the worker pool.
HEALTH_DEADLINE_SECONDS = 20.0


@pytest.fixture
def gmail_sandbox() -> Iterator[GmailSandbox]:
    """The sandbox as a process of its own (instead of the session's in-process one)."""
    process = SandboxProcess().start()
    try:
        yield GmailSandbox(url=process.url, admin=AdminClient(process.url))
    finally:
        process.stop()


class HealthProbe:
    """Asks the service's gRPC health every half second from its own thread and keeps every answer."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._stop = threading.Event()
        self.answers: list[str] = []
        self.slowest_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def start(self) -> HealthProbe:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = self._stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_SECONDS)
                self.answers.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.RpcError as error:
                self.answers.append(error.code().name)
            self.slowest_seconds = max(self.slowest_seconds, time.monotonic() - started)
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=HEALTH_DEADLINE_SECONDS + 5)
        self._channel.close()


async def serving_within(port: int, seconds: float) -> bool:
    """True once the service's health answers SERVING (asked every half second for up to `seconds`)."""
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return True
            await asyncio.sleep(0.5)
    return False


async def test_burst_of_25_mails_of_10_mb_on_one_mailbox_is_all_published_and_no_pass_fails(
    ingest_world: IngestWorld, ingest_service: RunningIngest
) -> None:
    world = ingest_world
    world.sandbox.create_mailbox(ALICE)
    mailbox = world.connect(ALICE)
    attachment = {
        "filename": "scan.bin",
        "content_type": "application/octet-stream",
        "data_base64": base64.b64encode(os.urandom(ATTACHMENT_BYTES)).decode(),
    }
    delivered: list[str] = []
    # In five deliveries of five (one request of 25 can outlast the sandbox admin client's 120 s bound on a loaded
    # machine); all are in the mailbox before ingest is asked to look.
    for _ in range(MAILS // 5):
        delivered += await asyncio.to_thread(
            world.deliver, ALICE, 5, subject="Scans", attachments=[attachment]
        )
    assert len(delivered) == MAILS
    probe = HealthProbe(ingest_service.running.port).start()
    started = time.monotonic()
    try:
        # What a push queues (the push endpoint itself is tested elsewhere).
        await queue_sync(
            world.js,
            mailbox.mailbox_id,
            ALICE,
            reason="PUSH",
            msg_id="heavy-burst",
            now=dt.datetime.now(dt.UTC),
        )

        async def all_published() -> bool:
            return set(world.recorder.recorded.normalized_ids()) >= set(delivered)

        deadline = time.monotonic() + 780
        while not await all_published():
            assert time.monotonic() < deadline, "the burst was not published within 780 s"
            await asyncio.sleep(0.2)
        published_after = time.monotonic() - started
    finally:
        probe.stop()
    # Reported, not asserted: the figures issue 16 asks for. While google-api-python-client parses the ~440 MB
    # batch response in a Gmail thread, the event loop can still lag for seconds (health then answers late or
    # NOT_SERVING for a moment); parsing itself no longer stalls it.
    not_serving = [answer for answer in probe.answers if answer != "SERVING"]
    print(
        f"\n25 x 10 MB published in {published_after:.1f} s; slowest health answer {probe.slowest_seconds:.2f} s;"
        f" {len(not_serving)} of {len(probe.answers)} health answers not SERVING: {sorted(set(not_serving))}"
    )
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(delivered, 1)
    events = [m for m in world.recorder.recorded.normalized if m.gmail_message_id in delivered]
    assert all(len(m.attachments) == 1 and m.attachments[0].size_bytes == ATTACHMENT_BYTES for m in events)
    assert probe.answers
    assert await serving_within(ingest_service.running.port, 60.0)
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    # No pass of the burst failed (before the worker pool every pass failed with a publish timeout).
    assert row is not None and row.consecutive_failures == 0 and row.last_error == "", row.last_error
