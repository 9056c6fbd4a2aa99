"""kill -9 of an outbound process around the Gmail call (services.runtime.faults): after a restart the email exists
once in the mailbox and its sent event appears once, because a send of unknown outcome is looked for in the Sent
folder (by Message-ID, and by recipients, subject and Date when Gmail replaced the Message-ID) before any new call."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import grpc
import pytest

from mailsync.v1 import outbound_pb2
from services.outbound.sending import AFTER_GMAIL_ANSWER, BEFORE_GMAIL_SEND
from services.runtime.faults import FAULTS_VARIABLE, STATE_DIR_VARIABLE
from services.runtime.service import stop_service
from tests.fixtures.outbound_world import LOCATION, OutboundWorld, individual

ALICE = "alice@gmail.com"
BOB = "bob@example.com"


def _sent_copies(world: OutboundWorld) -> list[dict]:
    return [m for m in world.sandbox.admin.messages(ALICE) if "SENT" in m["labelIds"]]


async def _crash_then_restart(world: OutboundWorld, outbound_processes, tmp_path: Path, point: str) -> tuple:  # type: ignore[no-untyped-def]
    assert world.service is not None
    await stop_service(world.service)
    await world.connect("u1", ALICE)
    faults = {FAULTS_VARIABLE: f"{point}:once", STATE_DIR_VARIABLE: str(tmp_path)}
    doomed = await outbound_processes(world.settings, tmp_path / "outbound.log", **faults)

    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        await world.stub(port=doomed.port).SendEmail(
            individual("req-crash", BOB, subject="Crash test"), timeout=30
        )
    assert crashed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await doomed.exited() == -9
    copies_at_crash = len(_sent_copies(world))

    restarted = await outbound_processes(world.settings, tmp_path / "outbound.log", **faults)
    return copies_at_crash, restarted


async def _settled(world: OutboundWorld, stub) -> outbound_pb2.Send:  # type: ignore[no-untyped-def]
    """The send as a retried SendEmail with the same request id answers once recovery settled it."""
    async with asyncio.timeout(30):
        while True:
            answer = await stub.SendEmail(individual("req-crash", BOB, subject="Crash test"), timeout=30)
            if answer.send.state == outbound_pb2.SEND_STATE_SENT:
                return answer.send
            await asyncio.sleep(0.2)


async def test_R15_kill_during_the_gmail_call_sends_once_after_restart(
    outbound_world: OutboundWorld, outbound_processes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    world = outbound_world

    copies_at_crash, restarted = await _crash_then_restart(
        world, outbound_processes, tmp_path, BEFORE_GMAIL_SEND
    )

    assert copies_at_crash == 0
    # Recovery (on startup) finds nothing in Sent, so the call is made again: exactly once.
    sent = (await world.events.wait_for("sent", 1, within=30))[0]
    send = await _settled(world, world.stub(port=restarted.port))
    assert [m["id"] for m in _sent_copies(world)] == [send.gmail_message_id] == [sent.gmail_message_id]
    await asyncio.sleep(1.0)
    assert len(world.events.of("sent")) == 1 and len(world.events.of("pending")) == 1
    assert len(_sent_copies(world)) == 1


async def test_R15_kill_between_gmails_answer_and_the_commit_never_sends_twice(
    outbound_world: OutboundWorld, outbound_processes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    world = outbound_world

    copies_at_crash, restarted = await _crash_then_restart(
        world, outbound_processes, tmp_path, AFTER_GMAIL_ANSWER
    )

    # Gmail had it before the crash; the sandbox replaced our Message-ID, so it is found by recipients and Date.
    assert copies_at_crash == 1
    sent = (await world.events.wait_for("sent", 1, within=30))[0]
    send = await _settled(world, world.stub(port=restarted.port))
    copies = _sent_copies(world)
    assert [m["id"] for m in copies] == [send.gmail_message_id] == [sent.gmail_message_id]
    assert sent.final_rfc_message_id == copies[0]["message_id"] != sent.send.rfc_message_id
    await asyncio.sleep(1.0)
    assert len(world.events.of("sent")) == 1
    quota = await world.stub(port=restarted.port).GetQuota(
        outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1")
    )
    assert quota.used == 1
    # Negative control: a blind retry of the same bytes is exactly what the check above would catch.
    raw = (
        world.sandbox.gmail(ALICE)
        .users()
        .messages()
        .get(userId="me", id=copies[0]["id"], format="raw")
        .execute()
    )
    world.sandbox.gmail(ALICE).users().messages().send(userId="me", body={"raw": raw["raw"]}).execute()
    assert len(_sent_copies(world)) == 2
    assert base64.urlsafe_b64decode(raw["raw"] + "==")
