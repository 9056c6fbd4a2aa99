"""Span links to the trace that caused work done later (OpenTelemetry's form for a cause that is not a parent).

Work that runs long after the request that caused it (ingest's re-check pass, threading's attachment fetch, the
Sent copy of a CRM send) starts its own trace; the row that schedules that work already exists, so it stores the
causing span's W3C `traceparent` (55 characters) in a column of its own, and the span started for the work links to
it. An empty string means "no cause recorded" (nothing was traced, or the row predates the column).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.trace import Link
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT_HEADER = "traceparent"
# "00-" + 32 hex trace id + "-" + 16 hex span id + "-" + 2 hex flags; later versions may append fields.
TRACEPARENT_MAX_LENGTH = 128
# W3C trace context whatever OTEL_PROPAGATORS says: the stored value must read back the same in every process.
_W3C = TraceContextTextMapPropagator()


def current_traceparent() -> str:
    """The current span's `traceparent`, to store with work it schedules ("" outside any sampled-in trace)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    value = carrier.get(TRACEPARENT_HEADER, "")
    return value if len(value) <= TRACEPARENT_MAX_LENGTH else ""


def traceparent_of(headers: Mapping[str, str]) -> str:
    """The `traceparent` a producer put in a message's headers, to store with work it causes ("" when none)."""
    value = headers.get(TRACEPARENT_HEADER, "")
    return value if len(value) <= TRACEPARENT_MAX_LENGTH else ""


def links_to(*traceparents: str) -> list[Link]:
    """Links to the spans the stored `traceparent`s name; empty and unreadable values give no link."""
    links: list[Link] = []
    for value in traceparents:
        if not value:
            continue
        context = trace.get_current_span(_W3C.extract({TRACEPARENT_HEADER: value})).get_span_context()
        if context.is_valid:
            links.append(Link(context))
    return links
