"""Trace context survives a NATS hop: the consumer's span is a child of the producer's span, in the same trace, and
an event relayed by the outbox continues the trace of the transaction that staged it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.consumer import BatchConsumer, Consumer, ConsumerSpec, Delivery, Outcome
from services.runtime.db import Database
from services.runtime.deadletters import list_dead_letters, record_dead_letter, redrive
from services.runtime.jetstream import publish, trace_carrier
from services.runtime.outbox import OutboxRelay, stage
from services.runtime.streams import MESSAGES, declare_streams
from tests.fixtures.messaging import HANG_BOUND_FLOOR_SECONDS

SUBJECT = subjects.normalized("mbx-t")
KIND = "message.normalized"
SPEC = ConsumerSpec(stream=MESSAGES.name, durable="trace-test", filter_subjects=(subjects.NORMALIZED_ALL,))


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _consume_one(client: Client, db: Database, provider: TracerProvider) -> tuple[Delivery, int]:
    """Runs a consumer until one message was handled; returns it and the trace id current inside the handler."""
    handled: asyncio.Future[tuple[Delivery, int]] = asyncio.get_running_loop().create_future()

    async def handle(delivery: Delivery) -> None:
        handled.set_result((delivery, trace.get_current_span().get_span_context().trace_id))

    consumer = Consumer(client, SPEC, handle, db=db, tracer_provider=provider, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    try:
        return await asyncio.wait_for(handled, timeout=HANG_BOUND_FLOOR_SECONDS)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)


def _span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


async def test_consumer_span_is_a_child_of_the_producer_span_across_nats(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    provider, exporter = _provider()
    event = events_pb2.NormalizedMessage(mailbox_id="mbx-t", subject="traced")
    await publish(jetstream, SUBJECT, event, msg_id="t-1", tracer_provider=provider)

    delivery, trace_in_handler = await _consume_one(nats_client, runtime_database, provider)

    producer, consumer = _span(exporter, f"publish {KIND}"), _span(exporter, f"process {KIND}")
    assert producer.kind == SpanKind.PRODUCER and consumer.kind == SpanKind.CONSUMER
    # The mailbox is an attribute, not part of the name (span names stay low-cardinality).
    assert producer.attributes is not None and producer.attributes["mailsync.mailbox_id"] == "mbx-t"
    assert consumer.attributes is not None and consumer.attributes["mailsync.mailbox_id"] == "mbx-t"
    assert consumer.context.trace_id == producer.context.trace_id == trace_in_handler
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert "traceparent" in delivery.headers
    assert delivery.payload == event.SerializeToString()


async def test_outbox_relay_publishes_in_the_trace_of_the_staging_transaction(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    provider, exporter = _provider()
    with provider.get_tracer("test").start_as_current_span("request") as request:
        async with runtime_database.write() as session:
            await stage(session, SUBJECT, events_pb2.NormalizedMessage(subject="staged"), "o-1")
    await OutboxRelay(runtime_database, jetstream, tracer_provider=provider).publish_pending()

    await _consume_one(nats_client, runtime_database, provider)

    producer, consumer = _span(exporter, f"publish {KIND}"), _span(exporter, f"process {KIND}")
    trace_id = request.get_span_context().trace_id
    assert producer.context.trace_id == consumer.context.trace_id == trace_id
    assert producer.parent is not None and producer.parent.span_id == request.get_span_context().span_id


async def test_each_message_of_a_batch_is_processed_in_its_own_producers_trace(
    runtime_database: Database, jetstream: JetStreamContext, nats_client: Client
) -> None:
    await declare_streams(jetstream)
    provider, exporter = _provider()
    tracer = provider.get_tracer("test")
    origins = []
    for index in range(2):
        with tracer.start_as_current_span(f"push {index}") as origin:
            origins.append(origin.get_span_context())
            event = events_pb2.NormalizedMessage(mailbox_id=f"mbx-{index}", subject="batched")
            await publish(
                jetstream,
                subjects.normalized(f"mbx-{index}"),
                event,
                msg_id=f"b-{index}",
                tracer_provider=provider,
            )
    handled: list[Delivery] = []
    both = asyncio.Event()

    async def handle(deliveries: Sequence[Delivery]) -> list[Outcome]:
        handled.extend(deliveries)
        if len(handled) >= 2:
            both.set()
        return [None] * len(deliveries)

    spec = ConsumerSpec(MESSAGES.name, "trace-batch", (subjects.NORMALIZED_ALL,), batch=10)
    consumer = BatchConsumer(nats_client, spec, handle, db=runtime_database, tracer_provider=provider)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(both.wait(), timeout=HANG_BOUND_FLOOR_SECONDS)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=HANG_BOUND_FLOOR_SECONDS)

    message_spans = {
        span.attributes["mailsync.mailbox_id"]: span
        for span in exporter.get_finished_spans()
        if span.name == f"process {KIND}" and span.attributes is not None
    }
    assert sorted(message_spans) == ["mbx-0", "mbx-1"]
    for index, origin in enumerate(origins):
        span = message_spans[f"mbx-{index}"]
        assert span.kind == SpanKind.CONSUMER
        assert span.context.trace_id == origin.trace_id
        publish_span = _span_by_parent(exporter, origin.span_id)
        assert span.parent is not None and span.parent.span_id == publish_span.context.span_id
        # Linked to the batch it was handled in.
        batch_ids = {
            s.context.span_id for s in exporter.get_finished_spans() if s.name == f"process {MESSAGES.name}"
        }
        assert {link.context.span_id for link in span.links} <= batch_ids and span.links


def _span_by_parent(exporter: InMemorySpanExporter, parent_span_id: int) -> ReadableSpan:
    [span] = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent_span_id
    ]
    return span


async def test_a_redrive_is_its_own_trace_linked_to_the_original(
    runtime_database: Database, jetstream: JetStreamContext
) -> None:
    await declare_streams(jetstream)
    provider, exporter = _provider()
    with provider.get_tracer("test").start_as_current_span("original work") as original:
        headers = trace_carrier()
    await record_dead_letter(
        runtime_database,
        Delivery("trace-test", MESSAGES.name, 7, SUBJECT, b"payload", headers, "d-1", 5),
        "ValueError: poison",
    )
    [letter] = await list_dead_letters(runtime_database)

    await redrive(runtime_database, jetstream, letter.id, tracer_provider=provider)

    redriving = _span(exporter, f"redrive {KIND}")
    published = _span(exporter, f"publish {KIND}")
    assert redriving.parent is None
    assert redriving.context.trace_id != original.get_span_context().trace_id
    assert [link.context.span_id for link in redriving.links] == [original.get_span_context().span_id]
    assert published.context.trace_id == redriving.context.trace_id
    assert redriving.attributes is not None and redriving.attributes["mailsync.mailbox_id"] == "mbx-t"
