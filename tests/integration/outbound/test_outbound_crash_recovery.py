"""kill -9 of an outbound process around the Gmail call (services.runtime.faults): the send is settled once, found
in the Sent folder by its own send id header whatever Gmail did to the Message-ID, or sent again exactly once
when it is certainly not there; and it is settled as soon as a process looks at it after the crash (the dead
process's liveness lock is gone), not when its lease runs out: these tests give it ten minutes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest

from mailsync.v1 import outbound_pb2
from services.outbound.connections import AuthConnections
from services.outbound.gmail_sends import GmailMailboxes
from services.outbound.ledger import SendLedger
from services.outbound.liveness import LeaseOnlyLiveness
from services.outbound.sending import AFTER_GMAIL_ANSWER, BEFORE_GMAIL_SEND, OutboundSender, SendingConfig
from services.outbound.store import get_send, send_by_request
from services.runtime.db import Database, open_database
from services.runtime.faults import FAULTS_VARIABLE, STATE_DIR_VARIABLE
from services.runtime.gmail import GmailApi, GmailClient, GmailEndpoint
from services.runtime.grpc_client import ServiceToken, open_channel
from services.runtime.service import stop_service
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS
from tests.fixtures.outbound_world import LOCATION, OutboundWorld, individual
from tests.fixtures.services import ServiceProcess

ALICE = "alice@gmail.com"
BOB = "bob@example.com"
TEN_MINUTES = 600.0


def _sent_copies(world: OutboundWorld) -> list[dict]:
    return [m for m in world.sandbox.admin.messages(ALICE) if "SENT" in m["labelIds"]]


async def _crash(
    world: OutboundWorld, outbound_processes: Any, tmp_path: Path, point: str, **settings: Any
) -> tuple[Any, ServiceProcess, dict[str, str]]:
    """A process killed at `point` during the send "req-crash"; returns its settings, the dead process, its env."""
    assert world.service is not None
    await stop_service(world.service)
    await world.connect("u1", ALICE)
    faults = {FAULTS_VARIABLE: f"{point}:once", STATE_DIR_VARIABLE: str(tmp_path)}
    settings_used = world.settings.model_copy(update=settings)
    doomed = await outbound_processes(settings_used, tmp_path / "outbound.log", **faults)
    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        await world.stub(port=doomed.port).SendEmail(
            individual("req-crash", BOB, subject="Crash test"), timeout=30
        )
    assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await doomed.exited() == -9
    return settings_used, doomed, faults


async def _settled(world: OutboundWorld, stub: Any) -> outbound_pb2.Send:
    """The send as a retried SendEmail with the same request id answers once it is settled."""
    async with asyncio.timeout(60):
        while True:
            answer = await stub.SendEmail(individual("req-crash", BOB, subject="Crash test"), timeout=30)
            if answer.send.state == outbound_pb2.SEND_STATE_SENT:
                return answer.send
            await asyncio.sleep(0.2)


async def _settled_without_asking_again(stub: Any, send_id: str) -> outbound_pb2.Send:
    """GetSend (which never recovers anything itself) until the send is SENT: only recovery can settle it."""
    async with asyncio.timeout(60):
        while True:
            answer = await stub.GetSend(outbound_pb2.GetSendRequest(location_id=LOCATION, send_id=send_id))
            if answer.send.state == outbound_pb2.SEND_STATE_SENT:
                return answer.send
            await asyncio.sleep(0.2)


async def _crashed_send(world: OutboundWorld) -> Any:
    async with _database(world) as db, db.read() as session:
        record = await send_by_request(session, LOCATION, "req-crash")
    assert record is not None
    return record


class _database:
    """The outbound database the processes share, opened by the test."""

    def __init__(self, world: OutboundWorld) -> None:
        self._db: Database = open_database(world.database.url, schema=world.database.schema)

    async def __aenter__(self) -> Database:
        return self._db

    async def __aexit__(self, *exc: object) -> None:
        await self._db.dispose()


async def test_R15_kill_before_the_gmail_call_sends_exactly_once_after_restart(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    settings, _, faults = await _crash(
        world, outbound_processes, tmp_path, BEFORE_GMAIL_SEND, send_lease_seconds=TEN_MINUTES
    )
    assert _sent_copies(world) == []

    restarted = await outbound_processes(settings, tmp_path / "outbound.log", **faults)

    # Recovery (on startup) finds nothing in Sent once the index had time, so the call is made again: once.
    sent = (await world.events.wait_for("sent", 1, within=60))[0]
    send = await _settled(world, world.stub(port=restarted.port))
    assert [m["id"] for m in _sent_copies(world)] == [send.gmail_message_id] == [sent.gmail_message_id]
    assert len(world.events.of("sent")) == 1 and len(world.events.of("pending")) == 1


async def test_R15_kill_between_gmails_answer_and_the_commit_never_sends_twice(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    settings, _, faults = await _crash(
        world, outbound_processes, tmp_path, AFTER_GMAIL_ANSWER, send_lease_seconds=TEN_MINUTES
    )
    assert len(_sent_copies(world)) == 1

    restarted = await outbound_processes(settings, tmp_path / "outbound.log", **faults)

    # Gmail had it before the crash and replaced our Message-ID: it is found by the send id header.
    sent = (await world.events.wait_for("sent", 1, within=60))[0]
    send = await _settled(world, world.stub(port=restarted.port))
    copies = _sent_copies(world)
    assert [m["id"] for m in copies] == [send.gmail_message_id] == [sent.gmail_message_id]
    assert sent.final_rfc_message_id == copies[0]["message_id"] != sent.send.rfc_message_id
    quota = await world.stub(port=restarted.port).GetQuota(
        outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1")
    )
    assert quota.used == 1
    assert len(world.events.of("sent")) == 1
    # Negative control: a blind retry of the same bytes is exactly what the check above would catch.
    gmail = world.sandbox.gmail(ALICE)
    raw = gmail.users().messages().get(userId="me", id=copies[0]["id"], format="raw").execute()
    gmail.users().messages().send(userId="me", body={"raw": raw["raw"]}).execute()
    assert len(_sent_copies(world)) == 2
    assert base64.urlsafe_b64decode(raw["raw"] + "==")


async def test_R15_a_send_caught_by_a_crash_settles_at_restart_not_when_its_ten_minute_lease_ends(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    settings, _, faults = await _crash(
        world, outbound_processes, tmp_path, AFTER_GMAIL_ANSWER, send_lease_seconds=TEN_MINUTES
    )
    crashed = await _crashed_send(world)
    # The control: left alone, the send is SENDING and its lease holds it for ten more minutes.
    assert crashed.state == "SENDING" and crashed.lease_owner
    assert crashed.lease_expires_at is not None
    assert crashed.lease_expires_at - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=9)

    restarted = await outbound_processes(settings, tmp_path / "outbound.log", **faults)

    # Nobody asks for the send again: the restarted process's recovery settles it on its own.
    send = await _settled_without_asking_again(world.stub(port=restarted.port), crashed.send_id)
    assert [m["id"] for m in _sent_copies(world)] == [send.gmail_message_id]
    log = restarted.log_text()
    assert "recovering a send left unsettled" in log and crashed.lease_owner in log
    assert "found a send of unknown outcome in the Sent folder" in log


async def test_R15_a_live_replica_takes_over_the_send_of_a_replica_that_died(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    settings, _, _ = await _crash(
        world, outbound_processes, tmp_path, AFTER_GMAIL_ANSWER, send_lease_seconds=TEN_MINUTES
    )
    crashed = await _crashed_send(world)

    # Another replica, started before or after: it sees the dead one's lock is gone and settles its send.
    survivor = await outbound_processes(settings, tmp_path / "survivor.log")

    send = await _settled_without_asking_again(world.stub(port=survivor.port), crashed.send_id)
    assert [m["id"] for m in _sent_copies(world)] == [send.gmail_message_id]


class SendsTogether(GmailMailboxes):
    """Gmail clients whose sends wait until every sender of `gate` has reached its own send: each of them has
    searched the Sent folder and found nothing by then, as no send went out before."""

    def __init__(self, api: GmailApi, access_token: Any, gate: asyncio.Barrier) -> None:
        super().__init__(api, access_token)
        self._gate = gate

    def client_for(self, mailbox_id: str) -> GmailClient:
        client = super().client_for(mailbox_id)
        send_raw = client.send_raw

        async def send_once_all_are_sending(raw: bytes, *, thread_id: str | None = None) -> dict[str, Any]:
            await asyncio.wait_for(self._gate.wait(), timeout=HANG_BOUND_FLOOR_SECONDS)
            return await send_raw(raw, thread_id=thread_id)

        client.send_raw = send_once_all_are_sending  # type: ignore[method-assign]
        return client


def _sender(
    world: OutboundWorld, db: Database, owner: str, sends_together: asyncio.Barrier | None = None
) -> tuple[OutboundSender, list[Any]]:
    """An outbound sender in the test process, on the shared database, as a process with owner id `owner`."""
    channel = open_channel(world.settings.auth_target, token=ServiceToken(world.keys.internal, "outbound"))
    connections = AuthConnections(channel)
    api = GmailApi(GmailEndpoint(root_url=world.sandbox.url))
    mailboxes = (
        GmailMailboxes(api, connections.access_token)
        if sends_together is None
        else SendsTogether(api, connections.access_token, sends_together)
    )
    config = SendingConfig(
        message_id_domain="crm.example.com",
        lease=dt.timedelta(seconds=TEN_MINUTES),
        index_lag=dt.timedelta(seconds=0.5),
        clock_margin=dt.timedelta(seconds=5),
    )
    sender = OutboundSender(
        db,
        SendLedger(),
        connections,
        mailboxes,
        config,
        liveness=LeaseOnlyLiveness(owner),
    )
    return sender, [channel, api]


async def _close(resources: list[Any]) -> None:
    for resource in resources:
        if isinstance(resource, GmailApi):
            await resource.aclose()
        else:
            await resource.close()


async def test_R15_a_replay_and_the_recovery_loop_of_one_process_never_both_resend_a_crashed_send(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    await _crash(world, outbound_processes, tmp_path, BEFORE_GMAIL_SEND, send_lease_seconds=TEN_MINUTES)
    crashed = await _crashed_send(world)
    async with _database(world) as db:
        sender, resources = _sender(world, db, "tester:1:0a0b0c0d")
        try:
            # Two coroutines of one process take the same dead process's send over at once.
            first, second = await asyncio.gather(
                sender.recover(crashed.send_id, dead_owner=crashed.lease_owner),
                sender.recover(crashed.send_id, dead_owner=crashed.lease_owner),
            )
            async with db.read() as session:
                settled = await get_send(session, crashed.send_id)
        finally:
            await _close(resources)

    assert settled is not None and settled.state == "SENT" and settled.gmail_calls == 2
    assert [m["id"] for m in _sent_copies(world)] == [settled.gmail_message_id]
    assert {first.send_id, second.send_id} == {crashed.send_id}


async def test_R15_negative_control_two_workers_with_one_owner_id_and_no_guard_send_twice(
    outbound_world: OutboundWorld, outbound_processes: Any, tmp_path: Path
) -> None:
    world = outbound_world
    await _crash(world, outbound_processes, tmp_path, BEFORE_GMAIL_SEND, send_lease_seconds=TEN_MINUTES)
    crashed = await _crashed_send(world)
    # Neither sends before both have searched Sent (after the index lag) and found nothing: without the gate, one
    # could send before the other's search, which then finds the copy (the test depended on timing that way).
    both_sending = asyncio.Barrier(2)

    async with _database(world) as db:
        # Two senders claiming to be the same process: the lease cannot tell them apart, only the in-process
        # guard of one sender could, and each has its own.
        one, first_resources = _sender(world, db, "tester:1:0a0b0c0d", both_sending)
        other, other_resources = _sender(world, db, "tester:1:0a0b0c0d", both_sending)
        try:
            await asyncio.gather(
                one.recover(crashed.send_id, dead_owner=crashed.lease_owner),
                other.recover(crashed.send_id, dead_owner=crashed.lease_owner),
            )
        finally:
            await _close(first_resources + other_resources)

    assert len(_sent_copies(world)) == 2
