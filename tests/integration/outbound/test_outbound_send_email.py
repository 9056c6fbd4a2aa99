"""SendEmail through the running outbound service, the real auth service, a real nats-server and the Gmail sandbox,
on SQLite and PostgreSQL: replies in their Gmail thread, events, idempotency, connection states, size limits."""

from __future__ import annotations

import asyncio
from email.header import decode_header, make_header

import grpc
import pytest

from mailsync.v1 import auth_pb2, common_pb2, outbound_pb2
from services.runtime.errors import error_info
from tests.fixtures.outbound_world import LOCATION, MESSAGE_ID_DOMAIN, OutboundWorld, individual

ALICE = "alice@gmail.com"
CAROL = "carol@gmail.com"
BOB = "bob@example.com"
MIB = 1024 * 1024


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def _sent_copies(world: OutboundWorld, address: str) -> list[dict]:
    return [m for m in world.sandbox.admin.messages(address) if "SENT" in m["labelIds"]]


async def test_R6_reply_lands_in_the_gmail_thread_and_sent_folder_and_events_carry_it(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE, display_name="Alíce Ëxample")
    world.sandbox.create_mailbox(CAROL)
    # Carol wrote to Alice first: the CRM answers in that conversation.
    world.sandbox.admin.user_send(CAROL, to=ALICE, subject="Quote request", body="How much?")
    inbound = next(m for m in world.sandbox.admin.messages(ALICE) if "INBOX" in m["labelIds"])
    stub = world.stub()

    answer = await stub.SendEmail(
        individual(
            "req-reply",
            CAROL,
            subject="Re: RE: Quote request",
            body="It is 10 EUR.",
            reply_gmail_thread_id=inbound["threadId"],
            reply_to_rfc_message_id=inbound["message_id"],
        )
    )

    send = answer.send
    assert send.state == outbound_pb2.SEND_STATE_SENT
    assert send.gmail_thread_id == inbound["threadId"]
    sent = _sent_copies(world, ALICE)
    assert [m["id"] for m in sent] == [send.gmail_message_id]
    assert sent[0]["threadId"] == inbound["threadId"] and sent[0]["subject"] == "Re: Quote request"
    # From carries the user's name from the CRM, as an RFC 2047 encoded word since it is not ASCII.
    received = next(m for m in world.sandbox.admin.messages(CAROL) if m["subject"] == "Re: Quote request")
    assert str(make_header(decode_header(received["from"]))) == f"Alíce Ëxample <{ALICE}>"
    pending = (await world.events.wait_for("pending", 1))[0]
    delivered = (await world.events.wait_for("sent", 1))[0]
    assert pending.send_id == send.send_id and pending.location_id == LOCATION
    assert pending.in_reply_to == [inbound["message_id"]]
    assert pending.rfc_message_id.endswith(f"@{MESSAGE_ID_DOMAIN}>")
    assert delivered.send.send_id == send.send_id
    assert (delivered.gmail_message_id, delivered.gmail_thread_id) == (
        send.gmail_message_id,
        inbound["threadId"],
    )
    # The sandbox, like Gmail, replaced our Message-ID: the sent event carries the one Gmail kept.
    assert delivered.final_rfc_message_id == sent[0]["message_id"] != pending.rfc_message_id
    assert send.rfc_message_id == sent[0]["message_id"]
    fetched = await stub.GetSend(outbound_pb2.GetSendRequest(location_id=LOCATION, send_id=send.send_id))
    assert fetched.send == send


async def test_R15_the_same_request_id_sent_concurrently_sends_one_message(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    other = await world.start()
    stubs = [world.stub(), world.stub(port=other.port)]

    answers = await asyncio.gather(*(stubs[i % 2].SendEmail(individual("req-same", BOB)) for i in range(6)))

    assert {a.send.send_id for a in answers} == {answers[0].send.send_id}
    assert {a.send.state for a in answers} == {outbound_pb2.SEND_STATE_SENT}
    assert len(_sent_copies(world, ALICE)) == 1
    await world.events.wait_for("sent", 1)
    await asyncio.sleep(0.3)
    assert len(world.events.of("sent")) == 1 and len(world.events.of("pending")) == 1
    quota = await stubs[0].GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert (quota.used, quota.remaining, quota.daily_limit) == (1, 499, 500)


async def _upload(stub: object, request_id: str, size: int) -> outbound_pb2.UploadAttachmentResponse:
    async def chunks():  # type: ignore[no-untyped-def]
        yield outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                request_id=request_id,
                location_id=LOCATION,
                filename=f"{request_id}.bin",
                content_type="application/pdf",
            )
        )
        block = b"\x25" * MIB
        for start in range(0, size, MIB):
            yield outbound_pb2.UploadAttachmentRequest(chunk=block[: min(MIB, size - start)])

    return await stub.UploadAttachment(chunks())  # type: ignore[attr-defined]


async def test_R14_attachments_over_25_mb_are_refused_with_nothing_sent(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    stub = world.stub()
    first = await _upload(stub, "up-1", 13 * MIB)
    second = await _upload(stub, "up-2", 13 * MIB)
    assert first.size_bytes == 13 * MIB and len(first.sha256) == 64

    error = await _refused(
        stub.SendEmail(individual("req-big", BOB, attachment_upload_ids=[first.upload_id, second.upload_id]))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "ATTACHMENTS_TOO_LARGE"
    assert _sent_copies(world, ALICE) == []
    whole = await _refused(_upload(stub, "up-3", 26 * MIB))
    assert whole.code() == grpc.StatusCode.INVALID_ARGUMENT
    quota = await stub.GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert quota.used == 0
    await asyncio.sleep(0.2)
    assert world.events.received == []
    # Within the limit, the same uploads' smaller sibling goes out as an attachment.
    small = await _upload(stub, "up-4", 2 * MIB)
    sent = await stub.SendEmail(individual("req-small", BOB, attachment_upload_ids=[small.upload_id]))
    assert sent.send.state == outbound_pb2.SEND_STATE_SENT
    pending = (await world.events.wait_for("pending", 1))[0]
    assert [(a.size_bytes, a.sha256) for a in pending.attachments] == [(2 * MIB, small.sha256)]


async def test_R10_after_update_email_new_sends_use_the_new_mailbox(outbound_world: OutboundWorld) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    world.sandbox.create_mailbox(CAROL)
    stub = world.stub()
    before = await stub.SendEmail(individual("req-before", BOB))

    begun = await world.auth.crm.UpdateEmail(auth_pb2.UpdateEmailRequest(user_id="u1", location_id=LOCATION))
    page = await world.auth.open_callback(world.auth.consent(begun.authorization_url, CAROL))
    assert page.status == 200
    after = await stub.SendEmail(individual("req-after", BOB))

    assert (before.send.mailbox_email, after.send.mailbox_email) == (ALICE, CAROL)
    assert len(_sent_copies(world, ALICE)) == 1 and len(_sent_copies(world, CAROL)) == 1


async def test_R11_R12_inactive_connections_refuse_with_failed_precondition_and_a_reason(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    stub = world.stub()
    await world.auth.crm.Disconnect(auth_pb2.DisconnectRequest(location_id=LOCATION, user_id="u1"))

    error = await _refused(stub.SendEmail(individual("req-gone", BOB)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(error)
    assert info.reason == "CONNECTION_NOT_ACTIVE" and info.metadata["state"] == "DISCONNECTED"
    never = await _refused(stub.SendEmail(individual("req-none", BOB, user_id="u2")))
    assert never.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(never).reason == "NO_CONNECTION"
    assert _sent_copies(world, ALICE) == []


async def test_R14_gmails_own_sending_limit_closes_sending_until_its_retry_time(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    # Gmail's own count (the user also sends from Gmail's web page) is lower than our ledger's.
    await world.connect("u1", ALICE, daily_send_limit=2)
    world.sandbox.admin.user_send(ALICE, to=BOB, subject="from the web", body="1")
    stub = world.stub()
    assert (await stub.SendEmail(individual("req-1", BOB))).send.state == outbound_pb2.SEND_STATE_SENT

    refused = await _refused(stub.SendEmail(individual("req-2", BOB)))

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(refused)
    assert info.reason == "SEND_QUOTA_EXCEEDED" and info.metadata["cause"] == "GMAIL_BLOCK"
    failed = (await world.events.wait_for("failed", 1))[0]
    assert "sending limit" in failed.reason
    quota = await stub.GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert quota.remaining == 0 and quota.used == 1
    assert quota.blocked_until.ToJsonString().startswith(info.metadata["retry_time"][:19])
    # Closed: the next send is refused by our ledger without asking Gmail.
    rate_limited_before = world.sandbox.admin.quota()
    again = await _refused(stub.SendEmail(individual("req-3", BOB)))
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(again).metadata["retry_time"] == info.metadata["retry_time"]
    assert world.sandbox.admin.quota() == rate_limited_before
    # The refused request replays as the same refusal.
    replay = await _refused(stub.SendEmail(individual("req-2", BOB)))
    assert error_info(replay).metadata["retry_time"] == info.metadata["retry_time"]
    assert len(_sent_copies(world, ALICE)) == 2


async def test_R13_bulk_email_goes_through_the_location_smtp_provider_not_gmail(
    outbound_world: OutboundWorld, start_smtp_server: object
) -> None:
    world = outbound_world
    await world.connect("u1", ALICE)
    smtp = start_smtp_server()  # type: ignore[operator]
    bulk = await world.start(
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        smtp_security="NONE",
        smtp_sender_email="news@crm.example.com",
    )
    stub = world.stub(port=bulk.port)
    # Independent of the Gmail connection's state.
    await world.auth.crm.Disconnect(auth_pb2.DisconnectRequest(location_id=LOCATION, user_id="u1"))

    answers = [
        await stub.SendEmail(
            individual(f"bulk-{kind}", BOB, kind=kind, bcc=[common_pb2.EmailAddress(email=CAROL)])
        )
        for kind in (common_pb2.SEND_KIND_BULK, common_pb2.SEND_KIND_WORKFLOW)
    ]

    assert [a.send.state for a in answers] == [outbound_pb2.SEND_STATE_SENT] * 2
    received = smtp.handler.received
    assert [mail.rcpt_tos for mail in received] == [(BOB, CAROL), (BOB, CAROL)]
    assert all(b"\r\nBcc:" not in mail.content for mail in received)
    assert b"Auto-Submitted: auto-generated" in received[1].content
    assert world.sandbox.admin.messages(ALICE) == []
    quota = await stub.GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id="u1"))
    assert quota.used == 0


async def test_R12_a_send_with_a_token_gmail_refuses_turns_the_connection_reauth_required_at_once(
    outbound_world: OutboundWorld,
) -> None:
    """The password changes and Google ends the mailbox's access tokens early. Outbound still holds one that
    looks valid for an hour; Gmail refuses it (401), outbound names it to auth, auth's refresh finds the grant
    dead: the send is refused as needing re-consent and the connection is REAUTH_REQUIRED now."""
    world = outbound_world
    await world.connect("u1", ALICE)
    stub = world.stub()
    first = await stub.SendEmail(individual("req-before", BOB))
    assert first.send.state == outbound_pb2.SEND_STATE_SENT
    world.sandbox.admin.change_password(ALICE, "changed")
    assert world.sandbox.admin.expire_access_tokens(ALICE) >= 1

    try:
        answer = await stub.SendEmail(individual("req-after", BOB))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    else:
        assert answer.send.state == outbound_pb2.SEND_STATE_FAILED, answer

    connection = await world.auth.connection_of("u1", LOCATION)
    assert connection.state == common_pb2.CONNECTION_STATE_REAUTH_REQUIRED
    assert "invalid_grant" in connection.last_error
    assert len(_sent_copies(world, ALICE)) == 1
