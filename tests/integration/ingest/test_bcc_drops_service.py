"""BCC drops and FetchAttachment in the running ingest service (its real composition root), with the real auth
service, the Gmail sandbox, a real nats-server and a real SMTP session on loopback (R9, R15, R16, R18)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import smtplib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from nats.aio.client import Client

from mailsync.v1 import auth_pb2, ingest_pb2, ingest_pb2_grpc
from services.ingest import store
from services.ingest.app import MIGRATIONS_DIR, build
from services.ingest.settings import IngestSettings
from services.ingest.work import queue_sync
from services.runtime.db import Database, migrate
from services.runtime.errors import error_info
from services.runtime.grpc_client import StaticToken, open_channel
from services.runtime.service import RunningService
from services.threading.ingest_attachments import IngestAttachmentFetcher
from services.threading.store.attachments import AttachmentToFetch
from tests.fixtures.auth_service import AuthWorld
from tests.fixtures.databases import DatabaseTarget, _drop_schema
from tests.fixtures.ingest_world import MessageRecorder
from tests.fixtures.messaging import eventually
from tests.fixtures.services import ServiceStarter, service_settings
from tools.ports import free_port

DROP_DOMAIN = "drop.crm.example"
USER_ADDRESS = "u1@crm.example.com"
TRUSTED_PASS = "mx.google.com; dmarc=pass header.from=crm.example.com; dkim=pass header.d=crm.example.com"
ALICE = "alice@example.com"
ATTACHMENT = bytes(range(256)) * 2600  # 650 KiB: three chunks


@dataclass
class DropStack:
    auth: AuthWorld
    ingest: RunningService
    smtp_port: int
    crm: ingest_pb2_grpc.IngestServiceStub
    internal: ingest_pb2_grpc.IngestServiceStub
    recorder: MessageRecorder
    # Threading's own client of FetchAttachment, on an internal channel.
    fetcher: IngestAttachmentFetcher

    @property
    def db(self) -> Database:
        return self.ingest.components.database

    def drops(self) -> list[Any]:
        return [m for m in self.recorder.recorded.normalized if m.HasField("bcc_drop")]

    async def address(self, location_id: str = "loc-1") -> str:
        answer = await self.crm.GetBccAddress(ingest_pb2.GetBccAddressRequest(location_id=location_id))
        return answer.address

    async def send(self, recipient: str, raw: bytes) -> None:
        def session() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=20) as client:
                client.sendmail(USER_ADDRESS, [recipient], raw)

        await asyncio.to_thread(session)

    async def drop_log(self, location_id: str = "loc-1") -> list[store.BccDropRow]:
        async with self.db.read() as session:
            return await store.drop_log(session, location_id)


def drop_mail(
    *,
    author: str = USER_ADDRESS,
    results: tuple[str, ...] = (TRUSTED_PASS,),
    subject: str = "Proposal",
    attachment: bytes | None = None,
) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    for value in results:
        message["Authentication-Results"] = value
    message["From"] = f"User One <{author}>"
    message["To"] = "Customer <customer@client.example>"
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = f"<{uuid.uuid4().hex}@crm.example.com>"
    message.set_content("Here is the proposal.")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="proposal.pdf")
    return message.as_bytes()


@pytest.fixture
def ingest_database(database_target: DatabaseTarget, tmp_path: Path) -> Any:
    """Ingest's own database beside auth's: a second SQLite file, or a second PostgreSQL schema."""
    if database_target.backend == "sqlite":
        yield DatabaseTarget("sqlite", f"sqlite:///{tmp_path / 'ingest.db'}", None)
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield DatabaseTarget("postgresql", database_target.url, schema)
    _drop_schema(database_target.url, schema)


@pytest.fixture
async def stack(
    auth_world: AuthWorld,
    ingest_database: DatabaseTarget,
    nats_server: Any,
    nats_client: Client,
    token_keys_value: str,
    tmp_path: Path,
    run_service_in_process: ServiceStarter,
) -> AsyncIterator[DropStack]:
    smtp_port = free_port()
    settings = service_settings(
        IngestSettings,
        nats_url=nats_server.url,
        database=ingest_database,
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
        auth_target=f"127.0.0.1:{auth_world.service.port}",
        gmail_root_url=auth_world.sandbox.url,
        sync_workers=1,
        recheck_delay_seconds=0.3,
        scheduler_interval_seconds=0.2,
        bcc_drop_domain=DROP_DOMAIN,
        bcc_trusted_authserv_ids="mx.google.com",
        bcc_verify_dkim=False,
        bcc_smtp_port=smtp_port,
    )
    ingest = await run_service_in_process(settings, build)
    recorder = MessageRecorder(nats_client)
    await recorder.start()
    channels = []

    def stub(locations: tuple[str, ...], internal: bool) -> ingest_pb2_grpc.IngestServiceStub:
        token = auth_world.keys.mint("threading" if internal else "crm", locations, internal=internal)
        # The ingest settings carry its larger message limit (a drop may be far above gRPC's 4 MiB).
        channel = open_channel(f"127.0.0.1:{ingest.port}", settings, token=StaticToken(token))
        channels.append(channel)
        return ingest_pb2_grpc.IngestServiceStub(channel)

    await auth_world.add_user("u1", locations=("loc-1",))
    internal = stub(("*",), True)
    fetcher = IngestAttachmentFetcher(channels[-1])
    yield DropStack(auth_world, ingest, smtp_port, stub(("loc-1",), False), internal, recorder, fetcher)
    await recorder.stop()
    for channel in channels:
        await channel.close()


async def fetch(stub: ingest_pb2_grpc.IngestServiceStub, **request: str) -> tuple[Any, bytes, list[int]]:
    metadata = None
    chunks: list[bytes] = []
    async for response in stub.FetchAttachment(ingest_pb2.FetchAttachmentRequest(**request)):
        if response.HasField("metadata"):
            assert metadata is None and not chunks, "metadata comes first, once"
            metadata = response.metadata
        else:
            chunks.append(response.chunk)
    return metadata, b"".join(chunks), [len(c) for c in chunks]


def to_fetch(**fields: str) -> AttachmentToFetch:
    values = dict.fromkeys(
        ("message_id", "attachment_id", "location_id", "mailbox_id", "gmail_message_id", "drop_id"), ""
    )
    values.update(fields)
    return AttachmentToFetch(**values, gmail_attachment_id="", expected_sha256="", size_bytes=0)


async def test_R9_drop_over_smtp_from_a_user_is_published_as_bcc_drop_once_and_its_attachment_fetchable(
    stack: DropStack,
) -> None:
    address = await stack.address()
    assert address.startswith("bcc+") and address.endswith("@" + DROP_DOMAIN)
    raw = drop_mail(attachment=ATTACHMENT)

    await stack.send(address, raw)
    # The same content again (an MTA retrying after a lost 250) is the same event (R15).
    await stack.send(address, raw)

    async def published() -> bool:
        return len(stack.drops()) >= 1

    await eventually(published, within=60)
    [event] = stack.drops()
    assert event.source == 2 and event.direction == 2  # MESSAGE_SOURCE_BCC_DROP, DIRECTION_OUTBOUND
    assert event.bcc_drop.location_id == "loc-1" and event.bcc_drop.sender_user_id == "u1"
    assert event.bcc_drop.envelope_recipient == address
    assert event.bcc_drop.content_digest == hashlib.sha256(raw).hexdigest()
    [described] = event.attachments
    assert described.filename == "proposal.pdf" and described.size_bytes == len(ATTACHMENT)

    metadata, content, sizes = await fetch(
        stack.internal, drop_id=event.bcc_drop.drop_id, attachment_id=described.attachment_id
    )
    assert hashlib.sha256(content).hexdigest() == hashlib.sha256(ATTACHMENT).hexdigest() == metadata.sha256
    assert metadata.filename == "proposal.pdf" and metadata.content_type == "application/pdf"
    assert max(sizes) <= 256 * 1024 and len(sizes) == 3
    log = await stack.drop_log()
    assert [row.accepted for row in log] == [True, True]
    through_threading = b"".join(
        [
            chunk
            async for chunk in stack.fetcher.fetch(
                to_fetch(drop_id=event.bcc_drop.drop_id, attachment_id=described.attachment_id)
            )
        ]
    )
    assert through_threading == ATTACHMENT


async def test_R9_refused_drops_over_smtp_are_logged_and_published_with_their_reason_and_no_content(
    stack: DropStack,
) -> None:
    address = await stack.address()
    stranger = drop_mail(
        author="someone@crm.example.com",
        results=("mx.google.com; dmarc=pass header.from=crm.example.com",),
        subject="Secret plan",
        attachment=ATTACHMENT,
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await stack.send(address, stranger)
    assert refused.value.smtp_code == 550 and b"not a user of this location" in refused.value.smtp_error

    # The receiving host's own (topmost) header says fail; the sender's forged lower one says pass.
    forged = drop_mail(results=("mx.google.com; dmarc=fail header.from=crm.example.com", TRUSTED_PASS))
    with pytest.raises(smtplib.SMTPDataError) as unauthenticated:
        await stack.send(address, forged)
    assert unauthenticated.value.smtp_code == 550 and b"5.7.26" in unauthenticated.value.smtp_error

    token = address.split("+", 1)[1].split("@")[0]
    wrong = address.replace(token, "a" * 32)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as unknown:
        await stack.send(wrong, drop_mail())
    assert unknown.value.recipients[wrong][0] == 550

    rotated = (
        await stack.crm.RotateBccAddress(ingest_pb2.RotateBccAddressRequest(location_id="loc-1"))
    ).address
    assert rotated != address
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await stack.send(address, drop_mail())
    # Control: the same kind of drop is accepted at the new address, and it is the only one published.
    await stack.send(rotated, drop_mail(subject="after rotation"))

    async def published() -> bool:
        return len(stack.drops()) >= 3

    await eventually(published, within=60)
    await asyncio.sleep(0.5)
    accepted = [event for event in stack.drops() if not event.bcc_drop.refusal_reason]
    refused = [event for event in stack.drops() if event.bcc_drop.refusal_reason]
    assert [event.subject for event in accepted] == ["after rotation"]
    # The refusals reach threading with their reason (R16): ids and addresses only, nothing of the content (R18).
    assert sorted(event.bcc_drop.refusal_reason.split(":")[0] for event in refused) == [
        "not_authenticated",
        "sender_not_a_user",
    ]
    for event in refused:
        assert event.bcc_drop.location_id == "loc-1" and event.rfc_message_id.endswith("@crm.example.com>")
        assert not (event.subject or event.text_body or event.html_body or event.snippet or event.attachments)
        assert not event.bcc_drop.sender_user_id
    [from_stranger] = [e for e in refused if e.bcc_drop.refusal_reason.startswith("sender_not_a_user")]
    assert {p.email for p in from_stranger.participants} == {
        "someone@crm.example.com",
        "customer@client.example",
    }
    assert b"Secret plan" not in from_stranger.SerializeToString()
    log = await stack.drop_log()
    assert [(row.accepted, row.reason.split(":")[0]) for row in log] == [
        (False, "sender_not_a_user"),
        (False, "not_authenticated"),
        (True, "accepted"),
    ]
    assert log[0].sender == "someone@crm.example.com"


async def test_R9_submit_bcc_drop_over_grpc_is_internal_only_and_refuses_with_the_reason(
    stack: DropStack,
) -> None:
    address = await stack.address()
    accepted = await stack.internal.SubmitBccDrop(
        ingest_pb2.SubmitBccDropRequest(
            request_id="r1", raw_message=drop_mail(), envelope_recipient=address, envelope_sender=USER_ADDRESS
        )
    )
    assert accepted.location_id == "loc-1" and accepted.sender_user_id == "u1" and accepted.drop_id
    large = await stack.internal.SubmitBccDrop(
        ingest_pb2.SubmitBccDropRequest(
            raw_message=drop_mail(subject="large", attachment=bytes(5 * 1024 * 1024)),
            envelope_recipient=address,
        )
    )
    assert large.drop_id and large.drop_id != accepted.drop_id

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.internal.SubmitBccDrop(
            ingest_pb2.SubmitBccDropRequest(
                raw_message=drop_mail(author="someone@crm.example.com"), envelope_recipient=address
            )
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(refused.value)
    assert info is not None and info.reason == "BCC_DROP_SENDER_NOT_A_USER"
    assert "not a user of this location" in (refused.value.details() or "")

    token = address.split("+", 1)[1].split("@")[0]
    with pytest.raises(grpc.aio.AioRpcError) as wrong_token:
        await stack.internal.SubmitBccDrop(
            ingest_pb2.SubmitBccDropRequest(
                raw_message=drop_mail(), envelope_recipient=address.replace(token, "b" * 32)
            )
        )
    assert wrong_token.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(wrong_token.value)
    assert info is not None and info.reason == "BCC_DROP_UNKNOWN_RECIPIENT"
    # Logged: the stranger's refusal (its location is known); not the wrong token's (no location to tell).
    assert [(row.accepted, row.sender) for row in await stack.drop_log()] == [
        (True, USER_ADDRESS),
        (True, USER_ADDRESS),
        (False, "someone@crm.example.com"),
    ]

    with pytest.raises(grpc.aio.AioRpcError) as outsider:
        await stack.crm.SubmitBccDrop(
            ingest_pb2.SubmitBccDropRequest(raw_message=drop_mail(), envelope_recipient=address)
        )
    assert outsider.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def all_published() -> bool:
        return len(stack.drops()) >= 3

    await eventually(all_published, within=60)
    assert sorted(e.bcc_drop.drop_id for e in stack.drops() if not e.bcc_drop.refusal_reason) == sorted(
        [accepted.drop_id, large.drop_id]
    )
    # The stranger's refusal goes to threading too, with its reason (R16).
    [refusal] = [e.bcc_drop.refusal_reason for e in stack.drops() if e.bcc_drop.refusal_reason]
    assert refusal.startswith("sender_not_a_user: ")


async def test_R9_bcc_address_is_stable_until_rotated_and_scoped_to_the_callers_location(
    stack: DropStack,
) -> None:
    first = await stack.address()
    assert await stack.address() == first
    rotated = await stack.crm.RotateBccAddress(ingest_pb2.RotateBccAddressRequest(location_id="loc-1"))
    assert rotated.address != first and await stack.address() == rotated.address

    for call in (
        stack.crm.GetBccAddress(ingest_pb2.GetBccAddressRequest(location_id="loc-2")),
        stack.crm.RotateBccAddress(ingest_pb2.RotateBccAddressRequest(location_id="loc-2")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.crm.GetBccAddress(ingest_pb2.GetBccAddressRequest())
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Control: a caller of loc-2 gets loc-2's own address, different from loc-1's.
    other = await stack.internal.GetBccAddress(ingest_pb2.GetBccAddressRequest(location_id="loc-2"))
    assert other.address not in (first, rotated.address)


async def test_fetch_attachment_streams_a_synced_gmail_attachment_and_refuses_what_was_never_published(
    stack: DropStack,
) -> None:
    auth = stack.auth
    auth.sandbox.create_mailbox(ALICE)
    assert (await auth.connect("u1", "loc-1", ALICE)).status == 200
    mailbox = (await auth.internal.GetMailbox(auth_pb2.GetMailboxRequest(email=ALICE))).mailbox
    delivered = auth.sandbox.admin.deliver(
        ALICE,
        sender="carol@outside.test",
        to=[ALICE],
        subject="File",
        body="see file",
        attachments=[
            {
                "filename": "data.bin",
                "content_type": "application/octet-stream",
                "data_base64": base64.b64encode(ATTACHMENT).decode(),
            }
        ],
    )
    await queue_sync(
        stack.ingest.components.jetstream,
        mailbox.mailbox_id,
        ALICE,
        reason="PUSH",
        msg_id="p1",
        now=dt.datetime.now(dt.UTC),
    )

    async def published() -> bool:
        return any(m.gmail_message_id == delivered["id"] for m in stack.recorder.recorded.normalized)

    await eventually(published, within=30)
    [event] = [m for m in stack.recorder.recorded.normalized if m.gmail_message_id == delivered["id"]]
    [described] = event.attachments
    request = {"mailbox_id": mailbox.mailbox_id, "gmail_message_id": delivered["id"]}

    # The published ledger is written right after the window's publishes are acknowledged, so a fetch can
    # race it by a moment: the answer then says to come back (UNAVAILABLE), as threading's collector does.
    async def fetched() -> bool:
        try:
            await fetch(stack.internal, attachment_id=described.attachment_id, **request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return False
        return True

    await eventually(fetched, within=30)
    metadata, content, sizes = await fetch(stack.internal, attachment_id=described.attachment_id, **request)
    assert hashlib.sha256(content).hexdigest() == hashlib.sha256(ATTACHMENT).hexdigest() == metadata.sha256
    assert metadata.filename == "data.bin" and max(sizes) <= 256 * 1024
    through_threading = b"".join(
        [
            chunk
            async for chunk in stack.fetcher.fetch(to_fetch(attachment_id=described.attachment_id, **request))
        ]
    )
    assert through_threading == ATTACHMENT

    with pytest.raises(grpc.aio.AioRpcError) as no_part:
        await fetch(stack.internal, attachment_id="9", **request)
    assert no_part.value.code() == grpc.StatusCode.NOT_FOUND and "no attachment" in (
        no_part.value.details() or ""
    )
    later = auth.sandbox.admin.deliver(ALICE, sender="carol@outside.test", to=[ALICE], subject="x", body="y")
    with pytest.raises(grpc.aio.AioRpcError) as unpublished:
        await fetch(
            stack.internal,
            mailbox_id=mailbox.mailbox_id,
            gmail_message_id=later["id"],
            attachment_id=described.attachment_id,
        )
    # Not final: a message the ledger does not hold may be one whose record has not been written yet.
    assert unpublished.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not recorded as published" in (unpublished.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as outsider:
        await fetch(stack.crm, attachment_id=described.attachment_id, **request)
    assert outsider.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_ingest_migrations_build_the_schema_the_store_describes(database: Database) -> None:
    await migrate(database, MIGRATIONS_DIR)

    def differences(connection: Any) -> list[Any]:
        return compare_metadata(MigrationContext.configure(connection), store.metadata)

    async with database.engine.connect() as connection:
        diff = await connection.run_sync(differences)
    assert [d for d in diff if d[0] != "modify_type"] == []


async def test_R18_a_drop_without_attachments_keeps_no_content_and_fetch_says_it_never_will(
    stack: DropStack,
) -> None:
    address = await stack.address()
    text_only = await stack.internal.SubmitBccDrop(
        ingest_pb2.SubmitBccDropRequest(
            raw_message=drop_mail(subject="text only"), envelope_recipient=address
        )
    )
    with_file = await stack.internal.SubmitBccDrop(
        ingest_pb2.SubmitBccDropRequest(
            raw_message=drop_mail(subject="with file", attachment=b"%PDF small"), envelope_recipient=address
        )
    )

    with pytest.raises(grpc.aio.AioRpcError) as never:
        await fetch(stack.internal, drop_id=text_only.drop_id, attachment_id="2")
    assert never.value.code() == grpc.StatusCode.NOT_FOUND
    assert "will never be available" in (never.value.details() or "")
    # Control: the drop with a file keeps its content, and the file is served.
    metadata, content, _ = await fetch(stack.internal, drop_id=with_file.drop_id, attachment_id="2")
    assert content == b"%PDF small" and metadata.filename == "proposal.pdf"
    # A part path that names no attachment of a kept drop is refused for good too.
    with pytest.raises(grpc.aio.AioRpcError) as no_part:
        await fetch(stack.internal, drop_id=with_file.drop_id, attachment_id="1")
    assert no_part.value.code() == grpc.StatusCode.NOT_FOUND
    assert "will never be available" in (no_part.value.details() or "")
