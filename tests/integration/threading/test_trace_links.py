"""Work threading does later because of an earlier trace links to that trace (issue 14): the fetch of a placed
message's attachment links to the trace that placed the message, and a CRM send's Sent copy, which Gmail's history
brings back in a trace of its own, links to the send's trace. Real nats-server and database; spans in memory."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, select

from mailsync.v1 import common_pb2, events_pb2
from services.runtime import subjects
from services.runtime.consumer import BatchConsumer
from services.runtime.db import Database
from services.runtime.jetstream import publish
from services.runtime.streams import declare_streams
from services.threading.blobs import AttachmentCollector, FolderBlobStore
from services.threading.codec import to_timestamp
from services.threading.consumers import (
    ThreadingHandlers,
    WaitPolicy,
    message_consumer_spec,
    send_consumer_spec,
)
from services.threading.store.attachments import AttachmentToFetch
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import AttachmentRow, CrmSendRow, DecisionRow
from services.threading.sync import MessageSync
from tests.fixtures.messaging import eventually
from tests.fixtures.threading_messages import T0, at

CONTENT = b"quarterly figures " * 4000
CONNECTED = common_pb2.ConnectionSnapshot(
    connection_id="conn-a",
    user_id="user-1",
    location_id="loc-a",
    state=common_pb2.CONNECTION_STATE_CONNECTED,
    start_time=to_timestamp(T0),
)


@dataclass
class Traced:
    db: Database
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
async def traced(threading_db: Database, nats_client, jetstream) -> AsyncIterator[Traced]:
    await declare_streams(jetstream)
    async with threading_db.write() as session:
        carol = ContactRecord(
            "c-carol", "loc-a", "Carol", (ContactEmail("carol@example.com", True),), "user-1", T0, 1, False
        )
        await upsert_contact(session, carol, now=T0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = WaitPolicy(budget=3, delay_seconds=0.2)
    handlers = ThreadingHandlers(MessageSync(threading_db), policy=policy, tracer_provider=provider)
    runners = [
        BatchConsumer(
            nats_client,
            spec,
            handle,
            db=threading_db,
            fetch_timeout=0.2,
            tracer_provider=provider,
        )
        for spec, handle in (
            (message_consumer_spec(policy), handlers.handle_message_batch),
            (send_consumer_spec(policy), handlers.handle_send_batch),
        )
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    yield Traced(threading_db, provider, exporter)
    for runner in runners:
        runner.stop()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)


def person(email: str, role: int) -> common_pb2.Participant:
    return common_pb2.Participant(email=email, role=role)


def from_gmail(
    gmail_id: str, rfc: str, *, frm: str, to: str, sent: bool = False
) -> events_pb2.NormalizedMessage:
    return events_pb2.NormalizedMessage(
        mailbox_id="mbx-1",
        mailbox_email="user@gmail.com",
        gmail_message_id=gmail_id,
        gmail_thread_id=f"t-{gmail_id}",
        rfc_message_id=rfc,
        direction=common_pb2.DIRECTION_OUTBOUND if sent else common_pb2.DIRECTION_INBOUND,
        label_ids=["SENT"] if sent else ["INBOX"],
        participants=[
            person(frm, common_pb2.PARTICIPANT_ROLE_FROM),
            person(to, common_pb2.PARTICIPANT_ROLE_TO),
        ],
        subject="Figures",
        text_body="see attached",
        internal_time=to_timestamp(at(20)),
        source=common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
        connections=[CONNECTED],
    )


async def count(db: Database, model: type, *where: object) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


class IngestContent:
    """Stands in for ingest's FetchAttachment (the collector's port): serves the content in chunks."""

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(CONTENT), 8000):
            yield CONTENT[start : start + 8000]

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        return self._chunks()


async def test_an_attachment_fetch_links_to_the_trace_that_placed_its_message(
    traced: Traced, jetstream, tmp_path: Path
) -> None:
    email = from_gmail("g-att", "<figures@example.com>", frm="carol@example.com", to="user@gmail.com")
    email.attachments.append(
        common_pb2.AttachmentDescriptor(
            attachment_id="2",
            filename="figures.pdf",
            content_type="application/pdf",
            size_bytes=len(CONTENT),
            sha256=hashlib.sha256(CONTENT).hexdigest(),
        )
    )
    with traced.provider.get_tracer("test").start_as_current_span("ingest pass") as delivered:
        await publish(
            jetstream,
            subjects.normalized("mbx-1"),
            email,
            msg_id="mbx-1:g-att",
            tracer_provider=traced.provider,
        )
    email_trace = delivered.get_span_context().trace_id

    async def placed() -> bool:
        return await count(traced.db, AttachmentRow) == 1

    await eventually(placed)
    collector = AttachmentCollector(
        traced.db, FolderBlobStore(tmp_path / "blobs"), IngestContent(), tracer_provider=traced.provider
    )
    assert await collector.collect_once() == 1

    [fetch] = traced.spans("fetch attachment")
    # Its own trace (the collector runs whenever it runs), linked to the email's.
    assert fetch.parent is None and fetch.context.trace_id != email_trace
    [link] = fetch.links
    assert link.context.trace_id == email_trace
    assert fetch.attributes is not None and fetch.attributes["mailsync.location_id"] == "loc-a"


async def test_a_sent_copy_links_to_the_trace_of_its_crm_send(traced: Traced, jetstream) -> None:
    pending = events_pb2.PendingSend(
        send_id="s-1",
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        location_id="loc-a",
        user_id="user-1",
        mailbox_id="mbx-1",
        rfc_message_id="<ours@crm>",
        participants=[
            person("user@gmail.com", common_pb2.PARTICIPANT_ROLE_FROM),
            person("carol@example.com", common_pb2.PARTICIPANT_ROLE_TO),
        ],
        subject="From the CRM",
        text_body="hi",
        create_time=to_timestamp(at(19)),
    )
    sent = events_pb2.SentMessage(
        send=pending, gmail_message_id="g-sent", gmail_thread_id="t-g-sent", final_rfc_message_id="<g@mail>"
    )
    tracer = traced.provider.get_tracer("test")
    # The send: one trace through outbound's events.
    with tracer.start_as_current_span("SendEmail") as send_span:
        await publish(
            jetstream,
            subjects.send_pending("mbx-1"),
            pending,
            msg_id="p:s-1",
            tracer_provider=traced.provider,
        )
        await publish(
            jetstream, subjects.send_sent("mbx-1"), sent, msg_id="s:s-1", tracer_provider=traced.provider
        )
    send_trace = send_span.get_span_context().trace_id

    async def recorded_sent() -> bool:
        return await count(traced.db, CrmSendRow, CrmSendRow.state == "sent") == 1

    await eventually(recorded_sent)
    # The Sent copy, later, from ingest's pass: a trace of its own.
    copy = from_gmail("g-sent", "<g@mail>", frm="user@gmail.com", to="carol@example.com", sent=True)
    with tracer.start_as_current_span("ingest pass") as pass_span:
        await publish(
            jetstream,
            subjects.normalized("mbx-1"),
            copy,
            msg_id="mbx-1:g-sent",
            tracer_provider=traced.provider,
        )
    copy_trace = pass_span.get_span_context().trace_id

    async def recognised() -> bool:
        return await count(traced.db, DecisionRow, DecisionRow.seen_key == "gmail:mbx-1:g-sent") == 1

    await eventually(recognised)
    await eventually(lambda: _true(traced.spans("recognize sent copy")))
    [span] = traced.spans("recognize sent copy")
    assert span.context.trace_id == copy_trace != send_trace
    [link] = span.links
    assert link.context.trace_id == send_trace
    assert span.attributes is not None and span.attributes["mailsync.send_id"] == "s-1"


async def _true(value: object) -> bool:
    return bool(value)
