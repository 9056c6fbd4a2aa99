"""The time a Gmail push arrived, carried as W3C baggage through the email's trace (the push handler sets it, the
NATS headers carry it with the trace context, threading reads it) so push-to-stored lag is measured without a
field in any event."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from opentelemetry import baggage
from opentelemetry import context as otel_context

PUSH_TIME_BAGGAGE = "mailsync.push.received_at"


def with_push_time(received_at: dt.datetime) -> otel_context.Context:
    """The current context with the push time (Unix seconds) as baggage; attach it around the push's work."""
    return baggage.set_baggage(PUSH_TIME_BAGGAGE, f"{received_at.timestamp():.3f}")


@contextlib.contextmanager
def push_received(received_at: dt.datetime) -> Iterator[None]:
    """Runs the block (the push's intake) with the push time in its baggage."""
    token = otel_context.attach(with_push_time(received_at))
    try:
        yield
    finally:
        otel_context.detach(token)
