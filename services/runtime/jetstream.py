"""Publishing to JetStream with a `Nats-Msg-Id` and the W3C trace context in the NATS headers.

Every publish runs inside a PRODUCER span `publish <kind>` (`publish mailbox.changed`: the partition key goes
in an attribute), and the trace context is injected inside that span,
so the consumer's span is a child of the publish (OpenTelemetry messaging conventions). Only the OpenTelemetry API
is used here: the SDK (exporters, sampling) is configured once per process by the telemetry setup.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from services.runtime import subjects

MSG_ID_HEADER = "Nats-Msg-Id"
INSTRUMENTATION_NAME = "mailsync.runtime.nats"


def tracer(provider: TracerProvider | None = None) -> trace.Tracer:
    """The runtime's tracer from the given provider, or from the process's global one."""
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
    tracer_provider: TracerProvider | None = None,
) -> PubAck:
    """Publishes a protobuf event, de-duplicated by `msg_id`; `is_duplicate(ack)` tells a repeat."""
    return await publish_payload(
        js, subject, message.SerializeToString(), msg_id=msg_id, tracer_provider=tracer_provider
    )


async def publish_payload(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    parent_headers: Mapping[str, str] | None = None,
    extra_headers: Mapping[str, str] | None = None,
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
