"""The threading service's gRPC API on a real service process (real NATS, SQLite and PostgreSQL, loopback gRPC):
contacts, conversations, paged messages, attachments, WatchMessages resuming without gaps, explanations (R16),
and tenant isolation on every read RPC (another location's ids, even guessed, reveal nothing)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mailsync.v1 import common_pb2, events_pb2, threading_pb2, threading_pb2_grpc
from services.runtime import subjects
from services.runtime.grpc_client import StaticToken, open_channel
from services.runtime.jetstream import publish
from services.runtime.service import RunningService
from services.threading.app import build
from services.threading.blobs import ContentUnavailable
from services.threading.codec import to_timestamp
from services.threading.settings import ThreadingSettings
from services.threading.store.attachments import AttachmentToFetch
from tests.fixtures.messaging import eventually
from tests.fixtures.services import TestTokens, service_settings
from tests.fixtures.threading_messages import at

ATTACHMENT = b"%PDF-1.7 quarterly numbers\n" * 5000


class IngestAttachmentStandIn:
    """The attachment port as ingest will serve it: the content of the one attachment the test mails."""

    def __init__(self) -> None:
        self.requested: list[str] = []

    async def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        self.requested.append(attachment.gmail_message_id)
        if attachment.gmail_message_id.startswith("gone"):
            # What ingest answers for a part it described without content (or a message Gmail no longer has).
            raise ContentUnavailable(
                "ingest answered NOT_FOUND: the message has no content for attachment 1.2"
            )
        for start in range(0, len(ATTACHMENT), 50_000):
            yield ATTACHMENT[start : start + 50_000]


def snapshot(location: str, start_minute: int = 0) -> common_pb2.ConnectionSnapshot:
    return common_pb2.ConnectionSnapshot(
        connection_id=f"conn-{location}",
        user_id="user-1",
        location_id=location,
        state=common_pb2.CONNECTION_STATE_CONNECTED,
        start_time=to_timestamp(at(start_minute)),
    )


def normalized(
    gmail_id: str, sender: str, *, minute: int, attachment: bool = False
) -> events_pb2.NormalizedMessage:
    event = events_pb2.NormalizedMessage(
        mailbox_id="mbx-1",
        gmail_message_id=gmail_id,
        gmail_thread_id=f"gt-{gmail_id}",
        rfc_message_id=f"<{gmail_id}@x>",
        direction=common_pb2.DIRECTION_INBOUND,
        label_ids=["INBOX"],
        participants=[
            common_pb2.Participant(email=sender, role=common_pb2.PARTICIPANT_ROLE_FROM),
            common_pb2.Participant(email="user@gmail.com", role=common_pb2.PARTICIPANT_ROLE_TO),
            common_pb2.Participant(email="boss@example.com", role=common_pb2.PARTICIPANT_ROLE_CC),
        ],
        subject=f"Subject {gmail_id}",
        text_body=f"Body of {gmail_id}",
        internal_time=to_timestamp(at(minute)),
        source=common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
        connections=[snapshot("loc-a"), snapshot("loc-b")],
    )
    if attachment:
        event.attachments.append(
            common_pb2.AttachmentDescriptor(
                attachment_id="1.2",
                filename="numbers.pdf",
                content_type="application/pdf",
                size_bytes=len(ATTACHMENT),
                sha256=hashlib.sha256(ATTACHMENT).hexdigest(),
                gmail_attachment_id="ANGjdJ-1",
            )
        )
    return event


@pytest.fixture
def attachment_source() -> IngestAttachmentStandIn:
    return IngestAttachmentStandIn()


@pytest.fixture
async def threading_service(
    nats_server: Any,
    database_target: Any,
    token_keys_value: str,
    tmp_path: Path,
    run_service_in_process: Any,
    attachment_source: IngestAttachmentStandIn,
) -> RunningService:
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=database_target,
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
        watch_poll_seconds=0.2,
        wait_delay_seconds=0.2,
    )
    return await run_service_in_process(
        settings, functools.partial(build, attachment_fetcher=attachment_source)
    )


class Client:
    def __init__(self, service: RunningService, token: str) -> None:
        self.channel = open_channel(f"127.0.0.1:{service.port}", token=StaticToken(token))
        self.stub = threading_pb2_grpc.ThreadingServiceStub(self.channel)


@pytest.fixture
async def crm_a(threading_service: RunningService, token_keys: TestTokens) -> AsyncIterator[Client]:
    client = Client(threading_service, token_keys.mint("crm", ["loc-a"]))
    yield client
    await client.channel.close()


@pytest.fixture
async def crm_b(threading_service: RunningService, token_keys: TestTokens) -> AsyncIterator[Client]:
    client = Client(threading_service, token_keys.mint("crm-b", ["loc-b"]))
    yield client
    await client.channel.close()


def contact(contact_id: str, email: str, location: str = "loc-a", version: int = 1, minute: int = 0) -> Any:
    return threading_pb2.Contact(
        contact_id=contact_id,
        location_id=location,
        display_name=contact_id,
        emails=[threading_pb2.ContactEmail(email=email, primary=True)],
        assigned_user_id="user-1",
        create_time=to_timestamp(at(minute)),
        version=version,
    )


async def seeded(crm: Client, jetstream: Any, count: int, *, attachment_on_first: bool = False) -> None:
    await crm.stub.UpsertContact(
        threading_pb2.UpsertContactRequest(contact=contact("c-carol", "carol@example.com"))
    )
    for n in range(count):
        event = normalized(
            f"g{n:03d}", "carol@example.com", minute=10 + n, attachment=attachment_on_first and n == 0
        )
        await publish(jetstream, subjects.normalized("mbx-1"), event, msg_id=f"mbx-1:g{n:03d}")
    await publish(
        jetstream,
        subjects.normalized("mbx-1"),
        normalized("g-stranger", "who@nowhere.example", minute=9),
        msg_id="mbx-1:g-stranger",
    )


async def conversation_of(crm: Client, *, expect_messages: int) -> threading_pb2.Conversation:
    found: list[threading_pb2.Conversation] = []

    async def complete() -> bool:
        response = await crm.stub.ListConversations(
            threading_pb2.ListConversationsRequest(location_id="loc-a")
        )
        found[:] = list(response.conversations)
        return bool(found) and found[0].message_count == expect_messages

    await eventually(complete)
    return found[0]


async def test_contacts_are_versioned_and_paged(crm_a: Client) -> None:
    for n in range(5):
        await crm_a.stub.UpsertContact(
            threading_pb2.UpsertContactRequest(
                contact=contact(f"c-{n}", f"p{n}@example.com", version=3, minute=n)
            )
        )
    stale = await crm_a.stub.UpsertContact(
        threading_pb2.UpsertContactRequest(contact=contact("c-0", "stale@example.com", version=2))
    )
    assert not stale.applied and stale.contact.emails[0].email == "p0@example.com"
    seen, token = [], ""
    while True:
        page = await crm_a.stub.ListContacts(
            threading_pb2.ListContactsRequest(location_id="loc-a", page_size=2, page_token=token)
        )
        seen += [c.contact_id for c in page.contacts]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"c-{n}" for n in range(5)]
    deleted = await crm_a.stub.DeleteContact(
        threading_pb2.DeleteContactRequest(location_id="loc-a", contact_id="c-1", version=4)
    )
    assert deleted.applied
    by_email = await crm_a.stub.ListContacts(
        threading_pb2.ListContactsRequest(location_id="loc-a", email="P1@example.com")
    )
    assert list(by_email.contacts) == []


async def test_R2_R7_R16_conversation_messages_paged_and_explained(crm_a: Client, jetstream: Any) -> None:
    await seeded(crm_a, jetstream, 5)
    conversation = await conversation_of(crm_a, expect_messages=5)
    got = await crm_a.stub.GetConversation(
        threading_pb2.GetConversationRequest(
            location_id="loc-a", conversation_id=conversation.conversation_id
        )
    )
    assert got.conversation.contact_id == "c-carol" and got.conversation.thread_count == 5
    subjects_seen, token = [], ""
    while True:
        page = await crm_a.stub.ListMessages(
            threading_pb2.ListMessagesRequest(
                location_id="loc-a",
                conversation_id=conversation.conversation_id,
                page_size=2,
                page_token=token,
            )
        )
        subjects_seen += [m.subject for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert subjects_seen == [f"Subject g{n:03d}" for n in range(5)]
    first = page.messages[-1]
    message = (
        await crm_a.stub.GetMessage(
            threading_pb2.GetMessageRequest(location_id="loc-a", message_id=first.message_id)
        )
    ).message
    roles = {(p.email, p.role) for p in message.participants}
    assert ("boss@example.com", common_pb2.PARTICIPANT_ROLE_CC) in roles
    assert message.rule_id == "R3" and message.mailbox_copies[0].gmail_message_id == "g004"

    explained = await crm_a.stub.ExplainMessage(
        threading_pb2.ExplainMessageRequest(location_id="loc-a", rfc_message_id="<g-stranger@x>")
    )
    (decision,) = explained.decisions
    assert not decision.synced and decision.rule_id == "R2" and "no contact" in decision.reason


async def test_attachment_fetched_after_placement_streams_back_whole(crm_a: Client, jetstream: Any) -> None:
    await seeded(crm_a, jetstream, 1, attachment_on_first=True)
    conversation = await conversation_of(crm_a, expect_messages=1)
    page = await crm_a.stub.ListMessages(
        threading_pb2.ListMessagesRequest(location_id="loc-a", conversation_id=conversation.conversation_id)
    )
    message_id = page.messages[0].message_id
    received: list[bytes] = []

    async def downloaded() -> bool:
        try:
            chunks = [
                r
                async for r in crm_a.stub.GetAttachment(
                    threading_pb2.GetAttachmentRequest(
                        location_id="loc-a", message_id=message_id, attachment_id="1.2"
                    )
                )
            ]
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False
        assert chunks[0].metadata.filename == "numbers.pdf"
        received[:] = [c.chunk for c in chunks[1:]]
        return True

    await eventually(downloaded)
    assert b"".join(received) == ATTACHMENT


async def test_issue16_an_attachment_whose_source_has_no_content_is_final_and_says_so(
    crm_a: Client, jetstream: Any, attachment_source: IngestAttachmentStandIn
) -> None:
    """Asked once, never again; GetAttachment answers FAILED_PRECONDITION saying it will never be available and
    why, instead of "not fetched yet; retry later" forever."""
    await seeded(crm_a, jetstream, 0)
    event = normalized("gone-1", "carol@example.com", minute=10, attachment=True)
    await publish(jetstream, subjects.normalized("mbx-1"), event, msg_id="mbx-1:gone-1")
    conversation = await conversation_of(crm_a, expect_messages=1)
    page = await crm_a.stub.ListMessages(
        threading_pb2.ListMessagesRequest(location_id="loc-a", conversation_id=conversation.conversation_id)
    )
    request = threading_pb2.GetAttachmentRequest(
        location_id="loc-a", message_id=page.messages[0].message_id, attachment_id="1.2"
    )
    answers: list[str] = []

    async def final() -> bool:
        try:
            [r async for r in crm_a.stub.GetAttachment(request)]
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            answers.append(error.details() or "")
            return "never be available" in answers[-1]
        raise AssertionError("content was served for an attachment whose source has none")

    await eventually(final)
    assert "no content for attachment 1.2" in answers[-1]
    # A later collection pass (the one that fetches the next attachment) leaves it alone: asked once in all.
    later = normalized("g-later", "carol@example.com", minute=11, attachment=True)
    await publish(jetstream, subjects.normalized("mbx-1"), later, msg_id="mbx-1:g-later")
    await conversation_of(crm_a, expect_messages=2)

    async def later_fetched() -> bool:
        return "g-later" in attachment_source.requested

    await eventually(later_fetched)
    assert attachment_source.requested.count("gone-1") == 1


async def test_R16_R9_a_refused_bcc_drop_is_explainable_and_keeps_no_content(
    crm_a: Client, crm_b: Client, jetstream: Any
) -> None:
    """A drop ingest refused reaches threading as ids, addresses and the refusal: ExplainMessage answers it for
    the drop's location (and no other), without a subject (R18)."""
    refused = events_pb2.NormalizedMessage(
        rfc_message_id="<forged@evil.example>",
        direction=common_pb2.DIRECTION_OUTBOUND,
        participants=[
            common_pb2.Participant(email="ceo@company.example", role=common_pb2.PARTICIPANT_ROLE_FROM),
            common_pb2.Participant(email="victim@example.com", role=common_pb2.PARTICIPANT_ROLE_TO),
        ],
        internal_time=to_timestamp(at(12)),
        source=common_pb2.MESSAGE_SOURCE_BCC_DROP,
        bcc_drop=events_pb2.BccDropInfo(
            drop_id="drop-refused-1",
            location_id="loc-a",
            content_digest="d" * 64,
            refusal_reason="NOT_AUTHENTICATED: no DMARC-aligned SPF or DKIM pass for company.example",
        ),
    )
    await publish(jetstream, subjects.normalized("drop-loc-a"), refused, msg_id="drop-refused-1")
    request = threading_pb2.ExplainMessageRequest(location_id="loc-a", rfc_message_id="<forged@evil.example>")

    async def explained() -> bool:
        try:
            await crm_a.stub.ExplainMessage(request)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return False
        return True

    await eventually(explained)
    answer = await crm_a.stub.ExplainMessage(request)
    (decision,) = answer.decisions
    assert (decision.location_id, decision.synced, decision.rule_id) == ("loc-a", False, "R9")
    assert "BCC drop refused: NOT_AUTHENTICATED" in decision.reason
    assert answer.subject == "" and decision.message_id == ""
    assert {p.email for p in answer.participants} == {"ceo@company.example", "victim@example.com"}
    with pytest.raises(grpc.aio.AioRpcError) as other_location:
        await crm_b.stub.ExplainMessage(
            threading_pb2.ExplainMessageRequest(location_id="loc-b", rfc_message_id="<forged@evil.example>")
        )
    assert other_location.value.code() == grpc.StatusCode.NOT_FOUND

    # Listed for its location, newest first, a page at a time; the other location lists nothing.
    second = events_pb2.NormalizedMessage()
    second.CopyFrom(refused)
    second.rfc_message_id = "<forged-2@evil.example>"
    second.bcc_drop.drop_id = "drop-refused-2"
    await publish(jetstream, subjects.normalized("drop-loc-a"), second, msg_id="drop-refused-2")

    async def both_listed() -> bool:
        listed = await crm_a.stub.ListRefusedDrops(threading_pb2.ListRefusedDropsRequest(location_id="loc-a"))
        return len(listed.refused_drops) == 2

    await eventually(both_listed)
    pages = []
    token = ""
    while True:
        page = await crm_a.stub.ListRefusedDrops(
            threading_pb2.ListRefusedDropsRequest(location_id="loc-a", page_size=1, page_token=token)
        )
        pages.append([(d.drop_id, d.rfc_message_id) for d in page.refused_drops])
        token = page.next_page_token
        if not token:
            break
    assert sorted(p for page in pages for p in page) == [
        ("drop-refused-1", "<forged@evil.example>"),
        ("drop-refused-2", "<forged-2@evil.example>"),
    ]
    assert all(len(page) == 1 for page in pages)
    listed = (
        await crm_a.stub.ListRefusedDrops(threading_pb2.ListRefusedDropsRequest(location_id="loc-a"))
    ).refused_drops[0]
    assert "NOT_AUTHENTICATED" in listed.reason and {p.email for p in listed.participants} == {
        "ceo@company.example",
        "victim@example.com",
    }
    elsewhere = await crm_b.stub.ListRefusedDrops(threading_pb2.ListRefusedDropsRequest(location_id="loc-b"))
    assert list(elsewhere.refused_drops) == []


async def test_watch_messages_resumes_after_a_disconnect_without_gaps(crm_a: Client, jetstream: Any) -> None:
    await seeded(crm_a, jetstream, 2)
    await conversation_of(crm_a, expect_messages=2)
    stream = crm_a.stub.WatchMessages(
        threading_pb2.WatchMessagesRequest(location_id="loc-a", after_cursor="0")
    )
    first = await stream.read()
    stream.cancel()
    assert first.cursor == "1"
    for n in range(2, 5):
        event = normalized(f"g{n:03d}", "carol@example.com", minute=10 + n)
        await publish(jetstream, subjects.normalized("mbx-1"), event, msg_id=f"mbx-1:g{n:03d}")
    resumed = crm_a.stub.WatchMessages(
        threading_pb2.WatchMessagesRequest(location_id="loc-a", after_cursor=first.cursor)
    )
    cursors = []
    async with asyncio.timeout(20):
        while len(cursors) < 4:
            cursors.append((await resumed.read()).cursor)
    resumed.cancel()
    assert cursors == ["2", "3", "4", "5"]


async def test_tenant_isolation_on_every_rpc(crm_a: Client, crm_b: Client, jetstream: Any) -> None:
    await seeded(crm_a, jetstream, 1, attachment_on_first=True)
    conversation = await conversation_of(crm_a, expect_messages=1)
    page = await crm_a.stub.ListMessages(
        threading_pb2.ListMessagesRequest(location_id="loc-a", conversation_id=conversation.conversation_id)
    )
    message = page.messages[0]
    thread_id = message.thread_ids[0]
    guessed = "00000000-0000-0000-0000-000000000000"

    async def code_of(call: Any) -> grpc.StatusCode:
        try:
            result = call()
            if hasattr(result, "read"):
                await result.read()
                result.cancel()
            else:
                await result
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    b = crm_b.stub
    denied = grpc.StatusCode.PERMISSION_DENIED
    missing = grpc.StatusCode.NOT_FOUND
    cases = {
        # Asking for location A with B's token.
        "ListContacts A": (
            lambda: b.ListContacts(threading_pb2.ListContactsRequest(location_id="loc-a")),
            denied,
        ),
        "UpsertContact A": (
            lambda: b.UpsertContact(
                threading_pb2.UpsertContactRequest(contact=contact("c-x", "x@example.com"))
            ),
            denied,
        ),
        "DeleteContact A": (
            lambda: b.DeleteContact(
                threading_pb2.DeleteContactRequest(location_id="loc-a", contact_id="c-carol", version=9)
            ),
            denied,
        ),
        "ListConversations A": (
            lambda: b.ListConversations(threading_pb2.ListConversationsRequest(location_id="loc-a")),
            denied,
        ),
        "WatchMessages A": (
            lambda: b.WatchMessages(threading_pb2.WatchMessagesRequest(location_id="loc-a")),
            denied,
        ),
        "ExplainMessage A": (
            lambda: b.ExplainMessage(
                threading_pb2.ExplainMessageRequest(
                    location_id="loc-a", rfc_message_id=message.rfc_message_id
                )
            ),
            denied,
        ),
        # A's ids under B's own location: nothing there.
        "GetConversation A id": (
            lambda: b.GetConversation(
                threading_pb2.GetConversationRequest(
                    location_id="loc-b", conversation_id=conversation.conversation_id
                )
            ),
            missing,
        ),
        "ListMessages A conversation": (
            lambda: b.ListMessages(
                threading_pb2.ListMessagesRequest(
                    location_id="loc-b", conversation_id=conversation.conversation_id
                )
            ),
            missing,
        ),
        "ListMessages A thread": (
            lambda: b.ListMessages(
                threading_pb2.ListMessagesRequest(location_id="loc-b", thread_id=thread_id)
            ),
            missing,
        ),
        "GetMessage A id": (
            lambda: b.GetMessage(
                threading_pb2.GetMessageRequest(location_id="loc-b", message_id=message.message_id)
            ),
            missing,
        ),
        "GetMessage guessed id": (
            lambda: b.GetMessage(threading_pb2.GetMessageRequest(location_id="loc-b", message_id=guessed)),
            missing,
        ),
        "GetAttachment A id": (
            lambda: b.GetAttachment(
                threading_pb2.GetAttachmentRequest(
                    location_id="loc-b", message_id=message.message_id, attachment_id="1.2"
                )
            ),
            missing,
        ),
    }
    results = {name: await code_of(call) for name, (call, _) in cases.items()}
    assert results == {name: expected for name, (_, expected) in cases.items()}
    # The message also passed through B's connection of the mailbox: B sees its own decision, never A's.
    explained = await b.ExplainMessage(
        threading_pb2.ExplainMessageRequest(location_id="loc-b", rfc_message_id=message.rfc_message_id)
    )
    assert [(d.location_id, d.synced) for d in explained.decisions] == [("loc-b", False)]
    # Negative control: the same calls with A's token and location succeed, so the refusals are about tenancy.
    own = await crm_a.stub.GetMessage(
        threading_pb2.GetMessageRequest(location_id="loc-a", message_id=message.message_id)
    )
    assert own.message.message_id == message.message_id
