"""A Gmail send without a definite answer is never repeated blindly: the Sent folder is searched first, the send is
repeated only when it is certainly not there, and the caller hears UNKNOWN while the Sent folder cannot be read."""

from __future__ import annotations

import asyncio

from mailsync.v1 import outbound_pb2
from tests.fixtures.outbound_world import LOCATION, OutboundWorld, individual

ALICE = "alice@gmail.com"
BOB = "bob@example.com"
SEND = "gmail.users.messages.send"
LIST = "gmail.users.messages.list"


def _sent_copies(world: OutboundWorld) -> list[dict]:
    return [m for m in world.sandbox.admin.messages(ALICE) if "SENT" in m["labelIds"]]


async def test_R15_a_send_gmail_answered_with_500_is_searched_for_then_sent_once(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    # The 500 comes before the sandbox handles the send: the message is certainly not in Sent.
    world.sandbox.admin.set_faults(SEND, next_errors=["backendError"])

    answer = await world.stub().SendEmail(individual("req-500", BOB))

    assert answer.send.state == outbound_pb2.SEND_STATE_SENT
    assert [m["id"] for m in _sent_copies(world)] == [answer.send.gmail_message_id]
    calls = world.sandbox.admin.quota()["users"][ALICE]["methods"]
    assert calls[SEND]["calls"] == 1  # the refused call was not charged; the repeat was the one send
    assert calls[LIST]["calls"] >= 1  # the Sent folder was searched before repeating


async def test_R15_unknown_when_sent_cannot_be_searched_and_settled_once_when_it_can(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    service = await world.start(gmail_retry_attempts=2, gmail_retry_base_seconds=0.05)
    stub = world.stub(port=service.port)
    world.sandbox.admin.set_faults(SEND, next_errors=["backendError"])
    world.sandbox.admin.set_faults(LIST, backend_error_share=1.0)

    answer = await stub.SendEmail(individual("req-unknown", BOB))

    assert answer.send.state == outbound_pb2.SEND_STATE_UNKNOWN
    assert _sent_copies(world) == []
    world.sandbox.admin.clear_faults()
    # The recovery loop searches again, finds nothing, sends once; a retried request answers SENT.
    async with asyncio.timeout(30):
        while True:
            again = await stub.SendEmail(individual("req-unknown", BOB))
            if again.send.state == outbound_pb2.SEND_STATE_SENT:
                break
            await asyncio.sleep(0.2)
    assert again.send.send_id == answer.send.send_id
    assert [m["id"] for m in _sent_copies(world)] == [again.send.gmail_message_id]
    sent = await world.events.wait_for("sent", 1)
    assert len(sent) == 1
    quota = await stub.GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert quota.used == 1
