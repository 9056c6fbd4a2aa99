"""Publishing to JetStream with a `Nats-Msg-Id` and the W3C trace context in the NATS headers.

Every publish runs inside a PRODUCER span `publish <kind>` (`publish mailbox.changed`: the partition key goes
in an attribute), and the trace context is injected inside that span,
so the consumer's span is a child of the publish (OpenTelemetry messaging conventions). Only the OpenTelemetry API
is used here: the SDK (exporters, sampling) is configured once per process by the telemetry setup.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nats.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TracerProvider

from services.runtime import subjects

MSG_ID_HEADER = "Nats-Msg-Id"
INSTRUMENTATION_NAME = "mailsync.runtime.nats"

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """The runtime's tracer from the given provider, or from the process's global one (a proxy until telemetry
    is configured, which then follows the configured provider). Made once per provider: the SDK builds a new
    tracer and instrumentation scope on every call, and a call per publish and per dead letter was about 3% of
    threading's CPU under a burst."""
    return trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=provider)


def trace_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (empty when nothing is being traced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def is_duplicate(ack: PubAck) -> bool:
    """True when JetStream dropped the publish as a repeat of a Nats-Msg-Id inside the duplicate window."""
    # nats-py leaves `duplicate` as None (not False) on a first publish.
    return ack.duplicate is True


async def publish(
    js: JetStreamContext,
    subject: str,
    message: Message,
    *,
    msg_id: str,
    links: Sequence[Link] = (),
    tracer_provider: TracerProvider | None = None,
) -> PubAck:
    """Publishes a protobuf event, de-duplicated by `msg_id`; `is_duplicate(ack)` tells a repeat. `links` go on
    the PRODUCER span: the trace that caused a publish made later (trace_links)."""
    return await publish_payload(
        js, subject, message.SerializeToString(), msg_id=msg_id, links=links, tracer_provider=tracer_provider
    )


async def publish_payload(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    parent_headers: Mapping[str, str] | None = None,
    extra_headers: Mapping[str, str] | None = None,
    links: Sequence[Link] = (),
    tracer_provider: TracerProvider | None = None,
) -> PubAck:
    """Publishes serialized bytes; `parent_headers` (a stored trace context) parents the span instead of the
    current context, which is how the outbox relay continues the trace of the transaction that staged an event."""
    if not msg_id:
        raise ValueError("a JetStream publish needs a Nats-Msg-Id")
    parent = propagate.extract(dict(parent_headers)) if parent_headers is not None else None
    with tracer(tracer_provider).start_as_current_span(
        f"publish {subjects.kind_of(subject)}",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            **subjects.key_attributes(subject),
            "messaging.system": "nats",
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
            "messaging.message.body.size": len(payload),
        },
    ) as span:
        headers: dict[str, str] = dict(extra_headers or {})
        propagate.inject(headers)
        headers[MSG_ID_HEADER] = msg_id
        try:
            ack = await js.publish(subject, payload, headers=headers)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        span.set_attribute("messaging.nats.stream", ack.stream)
        span.set_attribute("messaging.nats.stream_sequence", ack.seq)
        span.set_attribute("messaging.nats.duplicate", is_duplicate(ack))
        return ack


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a producer put in a message's headers (an empty context when there is none)."""
    return propagate.extract(dict(headers or {}))


@dataclass(frozen=True)
class Outgoing:
    """One message for `publish_all`: where it goes, its protobuf event, and its de-duplication id."""

    subject: str
    message: Message
    msg_id: str


class PublishIncomplete(nats.errors.Error):
    """Some messages of a `publish_all` were still not acknowledged after every attempt; those that were stay
    stored (a later attempt with the same ids is de-duplicated by JetStream)."""

    def __init__(self, unacked: Sequence[str], cause: BaseException | None) -> None:
        self.unacked = tuple(unacked)
        self.cause = cause
        super().__init__(
            f"{len(self.unacked)} publishes unacknowledged (first: {self.unacked[0] if self.unacked else '-'}): "
            f"{type(cause).__name__ if cause else 'TimeoutError'}: {cause or 'no ack in time'}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


async def publish_all(
    js: JetStreamContext,
    messages: Sequence[Outgoing],
    *,
    ack_timeout: float = 10.0,
    attempts: int = 3,
    retry_delay: float = 0.5,
    tracer_provider: TracerProvider | None = None,
) -> list[PubAck]:
    """Publishes every message without waiting in between and then awaits their acks together; the ones not
    acknowledged in `ack_timeout` (or refused) are published again, up to `attempts` times in all, with the same
    Nats-Msg-Id, so one that did land the first time is only reported duplicate. Returns the acks in the order
    given; raises `PublishIncomplete` when some are still unacknowledged.

    One round trip for N messages instead of N: what an ingest pass publishes costs one wait, and no ack waits
    behind work done between two publishes (its timer starts only when everything was sent)."""
    if any(not item.msg_id for item in messages):
        raise ValueError("a JetStream publish needs a Nats-Msg-Id")
    acks: list[PubAck | None] = [None] * len(messages)
    payloads = [item.message.SerializeToString() for item in messages]
    pending = list(range(len(messages)))
    last_error: BaseException | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            await asyncio.sleep(retry_delay * attempt)
        sent: dict[asyncio.Future[PubAck], tuple[int, trace.Span]] = {}
        for index in pending:
            item = messages[index]
            span = tracer(tracer_provider).start_span(
                f"publish {subjects.kind_of(item.subject)}",
                kind=SpanKind.PRODUCER,
                attributes={
                    **subjects.key_attributes(item.subject),
                    "messaging.system": "nats",
                    "messaging.operation.name": "publish",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": item.subject,
                    "messaging.message.id": item.msg_id,
                    "messaging.message.body.size": len(payloads[index]),
                    "messaging.batch.message_count": len(messages),
                },
            )
            headers: dict[str, str] = {}
            with trace.use_span(span, end_on_exit=False):
                propagate.inject(headers)
            headers[MSG_ID_HEADER] = item.msg_id
            try:
                future = await js.publish_async(item.subject, payloads[index], headers=headers)
            except Exception as exc:  # the connection refused the write: retried with the rest
                last_error = exc
                _end_span(span, exc)
                continue
            sent[future] = (index, span)
        if sent:
            await asyncio.wait(sent, timeout=ack_timeout)
        handed_over = {index for index, _ in sent.values()}
        failed = [index for index in pending if index not in handed_over]
        for future, (index, span) in sent.items():
            if not future.done():
                future.cancel()
                last_error = TimeoutError(f"no ack for {messages[index].msg_id} in {ack_timeout}s")
                _end_span(span, last_error)
                failed.append(index)
            elif future.exception() is not None:
                last_error = future.exception()
                _end_span(span, last_error)
                failed.append(index)
            else:
                ack = future.result()
                acks[index] = ack
                span.set_attribute("messaging.nats.stream", ack.stream)
                span.set_attribute("messaging.nats.stream_sequence", ack.seq)
                span.set_attribute("messaging.nats.duplicate", is_duplicate(ack))
                span.end()
        pending = sorted(failed)
        if not pending:
            return [ack for ack in acks if ack is not None]
        if attempt + 1 < max(1, attempts):
            log.warning(
                "publishes not acknowledged in time or refused; sending them again with the same ids",
                extra={
                    "unacked": len(pending),
                    "first_msg_id": messages[pending[0]].msg_id,
                    "attempt": attempt + 1,
                },
            )
    raise PublishIncomplete([messages[index].msg_id for index in pending], last_error)


def _end_span(span: trace.Span, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
