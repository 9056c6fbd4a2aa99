"""Queuing a sync pass for a mailbox: a MailboxChanged work item on the mailbox's own subject of the work stream,
which keeps only the latest item per mailbox, so any burst of reasons coalesces into one pending pass."""

from __future__ import annotations

import datetime as dt

from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.trace import TracerProvider

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.jetstream import publish
from services.runtime.protobuf_time import to_timestamp
from services.runtime.trace_links import links_to

REASONS = {
    "PUSH": events_pb2.MAILBOX_CHANGE_REASON_PUSH,
    "POLL": events_pb2.MAILBOX_CHANGE_REASON_POLL,
    "RECHECK": events_pb2.MAILBOX_CHANGE_REASON_RECHECK,
    "RETRY": events_pb2.MAILBOX_CHANGE_REASON_POLL,
    "RESYNC": events_pb2.MAILBOX_CHANGE_REASON_RESYNC,
    "AUDIT": events_pb2.MAILBOX_CHANGE_REASON_AUDIT,
    "REAUTHORIZED": events_pb2.MAILBOX_CHANGE_REASON_REAUTHORIZED,
}


async def queue_sync(
    js: JetStreamContext,
    mailbox_id: str,
    mailbox_email: str,
    *,
    reason: str,
    msg_id: str,
    now: dt.datetime,
    history_id: int = 0,
    caused_by: str = "",
    tracer_provider: TracerProvider | None = None,
) -> PubAck:
    """Publishes the work item and returns once JetStream stored it (durably queued); `msg_id` de-duplicates
    repeats of the same cause (a push delivered twice, two schedulers seeing the same due check). `caused_by`: the
    stored traceparent of the pass that scheduled this one, linked from the publish that starts its trace."""
    item = events_pb2.MailboxChanged(
        mailbox_id=mailbox_id,
        mailbox_email=mailbox_email,
        history_id=history_id,
        reason=REASONS[reason],
        observe_time=to_timestamp(now),
    )
    return await publish(
        js,
        subjects.mailbox_changed(mailbox_id),
        item,
        msg_id=msg_id,
        links=links_to(caused_by),
        tracer_provider=tracer_provider,
    )
