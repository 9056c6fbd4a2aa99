"""What threading reports about each message it decided: one INFO log line per location decision (placed or not,
with the rule, in the email's own trace), the decisions counter by rule, source and mailbox tier, the sync lag of what it stored
(from Gmail's internal date, and from the push when the message's trace carried the push's time as baggage), and
for a Sent copy recognised as a CRM send's, a span in the copy's trace linked to the send's trace."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from opentelemetry import baggage, trace

from services.runtime.consumer import Delivery, in_trace_of
from services.runtime.instruments import instruments
from services.runtime.push_time import PUSH_TIME_BAGGAGE
from services.runtime.trace_links import links_to
from services.threading.domain.model import Decision
from services.threading.domain.model import Outcome as RuleOutcome
from services.threading.store.operations import Operation, OperationResult, PlaceMessage
from services.threading.store.values import SentCopy

log = logging.getLogger(__name__)


def report_decisions(
    deliveries: Sequence[Delivery],
    operations: Sequence[Operation],
    results: Sequence[OperationResult],
    now: dt.datetime,
) -> None:
    """Reports every decided PlaceMessage of a committed batch (waiting ones are reported when they decide)."""
    for delivery, operation, result in zip(deliveries, operations, results, strict=True):
        if not isinstance(operation, PlaceMessage) or not isinstance(result, Decision):
            continue
        if result.outcome is not RuleOutcome.DECIDED:
            continue
        message = operation.message
        source = message.source.value.lower()
        with in_trace_of(delivery):
            for decision in result.decisions:
                instruments().messages_decided.add(
                    1,
                    {
                        "mailsync.rule": decision.rule_id,
                        "mailsync.synced": decision.synced,
                        "mailsync.source": source,
                        "mailsync.mailbox_tier": operation.mailbox_tier,
                    },
                )
                log.info(
                    "message placed" if decision.synced else "message not placed",
                    extra={
                        "location_id": decision.location_id,
                        "rule": decision.rule_id,
                        "mailbox_id": message.mailbox_id,
                        "gmail_message_id": message.gmail_message_id,
                        "contact_id": decision.contact_id,
                        "reason": decision.reason,
                    },
                )
        if not result.synced_anywhere:
            continue
        lag = instruments().sync_lag
        lag.record(
            max((now - message.internal_time).total_seconds(), 0.0),
            {"mailsync.lag.from": "internal_date", "mailsync.source": source},
        )
        pushed = baggage.get_baggage(PUSH_TIME_BAGGAGE, delivery.trace_context())
        if isinstance(pushed, str):
            try:
                pushed_at = dt.datetime.fromtimestamp(float(pushed), dt.UTC)
            except ValueError:
                continue
            lag.record(
                max((now - pushed_at).total_seconds(), 0.0),
                {"mailsync.lag.from": "push", "mailsync.source": source},
            )


def report_sent_copies(
    deliveries: Sequence[Delivery],
    operations: Sequence[Operation],
    sent_copies: Sequence[SentCopy],
    tracer: trace.Tracer,
) -> None:
    """A Sent copy comes back through Gmail's history in a trace of its own (ingest's pass); when threading
    recognises it as a CRM send's (R6), a span `recognize sent copy` in the copy's trace links to the send's trace,
    whose context threading kept with the send record (never in the email itself)."""
    if not sent_copies:
        return
    by_copy = {(c.mailbox_id, c.gmail_message_id): c for c in sent_copies}
    for delivery, operation in zip(deliveries, operations, strict=True):
        if not isinstance(operation, PlaceMessage):
            continue
        copy = by_copy.get((operation.message.mailbox_id, operation.message.gmail_message_id))
        if copy is None:
            continue
        tracer.start_span(
            "recognize sent copy",
            context=delivery.trace_context(),
            links=links_to(copy.send_traceparent),
            attributes={"mailsync.mailbox_id": copy.mailbox_id, "mailsync.send_id": copy.send_id},
        ).end()
