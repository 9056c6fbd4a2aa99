"""The daily limit a mailbox gets (R14): its account type as Google's own answer says it (the ID token's hd claim,
through auth), else the one set with SetSendLimit, and what GetQuota shows of it; refusals name the Gmail
address. And the uploads a send used, served to internal callers only (FetchSentAttachment), from the moment the
send is recorded. Real auth, outbound, nats-server and the Gmail sandbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from mailsync.v1 import auth_pb2, outbound_pb2, outbound_pb2_grpc
from services.runtime.errors import error_info
from services.runtime.grpc_client import StaticToken, open_channel
from tests.fixtures.outbound_world import LOCATION, OutboundWorld, individual

CONSUMER = "alice@gmail.test"
WORKSPACE = "sales@acme.example"
BOB = "bob@example.com"


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def _quota(world: OutboundWorld, user_id: str = "u1") -> outbound_pb2.GetQuotaResponse:
    return await world.stub().GetQuota(outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id=user_id))


async def test_R14_a_consumer_account_of_any_domain_gets_the_consumer_limit_as_googles_answer_says(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    # Not gmail.com, and not Workspace either: the sandbox mailbox allows 500 a day, as Google's ID token says.
    await world.connect("u1", CONSUMER)

    quota = await _quota(world)

    assert (quota.daily_limit, quota.limit_source) == (500, outbound_pb2.DAILY_LIMIT_SOURCE_CONSUMER_ACCOUNT)
    assert quota.account_type == auth_pb2.ACCOUNT_TYPE_CONSUMER and quota.mailbox_email == CONSUMER
    mailbox = await world.auth.internal.GetMailbox(
        auth_pb2.GetMailboxRequest(mailbox_id=(await world.auth.connection_of("u1", LOCATION)).mailbox_id)
    )
    assert mailbox.mailbox.account_type == auth_pb2.ACCOUNT_TYPE_CONSUMER and not mailbox.mailbox.workspace


async def test_R14_a_workspace_account_gets_the_workspace_limit(outbound_world: OutboundWorld) -> None:
    world = outbound_world
    await world.connect("u1", WORKSPACE, workspace=True)

    quota = await _quota(world)

    assert (quota.daily_limit, quota.limit_source) == (
        2000,
        outbound_pb2.DAILY_LIMIT_SOURCE_WORKSPACE_ACCOUNT,
    )
    assert quota.account_type == auth_pb2.ACCOUNT_TYPE_WORKSPACE


async def test_R14_a_limit_set_through_the_api_wins_is_enforced_and_can_be_cleared(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", WORKSPACE, workspace=True)
    stub = world.stub()

    answer = await stub.SetSendLimit(
        outbound_pb2.SetSendLimitRequest(location_id=LOCATION, user_id="u1", daily_limit=2)
    )

    assert (answer.quota.daily_limit, answer.quota.limit_source) == (
        2,
        outbound_pb2.DAILY_LIMIT_SOURCE_SET_EXPLICITLY,
    )
    for number in range(2):
        sent = await stub.SendEmail(individual(f"req-{number}", BOB))
        assert sent.send.state == outbound_pb2.SEND_STATE_SENT
    refused = await _refused(stub.SendEmail(individual("req-2", BOB)))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The error names the Gmail address a person recognises; the internal id stays in the details.
    assert refused.details().startswith(f"{WORKSPACE} may not send until ")
    info = error_info(refused)
    assert info is not None and info.metadata["mailbox_email"] == WORKSPACE and info.metadata["mailbox_id"]
    cleared = await stub.SetSendLimit(outbound_pb2.SetSendLimitRequest(location_id=LOCATION, user_id="u1"))
    assert (cleared.quota.daily_limit, cleared.quota.used, cleared.quota.limit_source) == (
        2000,
        2,
        outbound_pb2.DAILY_LIMIT_SOURCE_WORKSPACE_ACCOUNT,
    )
    assert (await stub.SendEmail(individual("req-3", BOB))).send.state == outbound_pb2.SEND_STATE_SENT


@pytest.mark.parametrize("daily_limit", [-1, 10_001])
async def test_an_impossible_limit_is_refused_naming_the_field(
    outbound_world: OutboundWorld, daily_limit: int
) -> None:
    world = outbound_world
    await world.connect("u1", CONSUMER)

    refused = await _refused(
        world.stub().SetSendLimit(
            outbound_pb2.SetSendLimitRequest(location_id=LOCATION, user_id="u1", daily_limit=daily_limit)
        )
    )

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "daily_limit" in refused.details()
    assert (await _quota(world)).daily_limit == 500


async def _upload(stub: outbound_pb2_grpc.OutboundServiceStub, content: bytes, request_id: str) -> str:
    async def requests():  # type: ignore[no-untyped-def]
        yield outbound_pb2.UploadAttachmentRequest(
            metadata=outbound_pb2.UploadAttachmentRequest.Metadata(
                request_id=request_id,
                location_id=LOCATION,
                filename="quote.pdf",
                content_type="application/pdf",
            )
        )
        yield outbound_pb2.UploadAttachmentRequest(chunk=content)

    return (await stub.UploadAttachment(requests())).upload_id


def _internal_stub(
    world: OutboundWorld, locations: tuple[str, ...] = ("*",)
) -> outbound_pb2_grpc.OutboundServiceStub:
    assert world.service is not None
    token = world.keys.mint("threading", locations, internal=True)
    channel = open_channel(f"127.0.0.1:{world.service.port}", token=StaticToken(token))
    world.channels.append(channel)
    return outbound_pb2_grpc.OutboundServiceStub(channel)


async def _fetch(
    stub: outbound_pb2_grpc.OutboundServiceStub, upload_id: str, location_id: str = LOCATION
) -> bytes:
    responses = [
        response
        async for response in stub.FetchSentAttachment(
            outbound_pb2.FetchSentAttachmentRequest(location_id=location_id, upload_id=upload_id)
        )
    ]
    assert responses[0].HasField("metadata")
    content = b"".join(response.chunk for response in responses[1:])
    assert responses[0].metadata.sha256 == hashlib.sha256(content).hexdigest()
    return content


async def test_R6_the_upload_a_send_used_is_served_to_internal_callers_only(
    outbound_world: OutboundWorld,
) -> None:
    world = outbound_world
    await world.connect("u1", CONSUMER)
    crm = world.stub()
    content = b"%PDF-1.7 quote " * 200_000  # 3 MB: several chunks
    upload_id = await _upload(crm, content, "upload-1")
    unused_id = await _upload(crm, b"never sent", "upload-2")
    internal = _internal_stub(world)

    # Before a send uses it, an upload is nobody's attachment.
    before = await _refused(_fetch(internal, upload_id))
    assert before.code() == grpc.StatusCode.NOT_FOUND
    sent = await crm.SendEmail(individual("req-1", BOB, attachment_upload_ids=[upload_id]))
    assert sent.send.state == outbound_pb2.SEND_STATE_SENT

    assert await _fetch(internal, f"upload:{upload_id}") == content
    assert (await _refused(_fetch(internal, unused_id))).code() == grpc.StatusCode.NOT_FOUND
    assert (await _refused(_fetch(internal, upload_id, "loc-2"))).code() == grpc.StatusCode.NOT_FOUND
    # A CRM caller, even of the right location, cannot read it this way.
    assert (await _refused(_fetch(crm, upload_id))).code() == grpc.StatusCode.PERMISSION_DENIED
