"""NATS handlers of the threading service: decode a batch of events, run them through MessageSync as one batch
(rules + store in one transaction, events staged in the same transaction through the outbox), and tell the
runtime's batch consumer, per message, whether it was applied, waits (RetryLater) or failed. An event that does
not decode fails alone (dead-lettered after its budget) and never holds back the rest of its batch.

After each committed batch the service is told once what it placed (`BatchApplied`), so WatchMessages readers of
those locations and the attachment collector wake once per batch, and only when they have something to do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncSession

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import ConsumerSpec, Delivery, Outcome, RetryLater
from services.runtime.instruments import mailbox_tier
from services.runtime.outbox import StagedEvent, stage_many
from services.runtime.streams import MESSAGES, SENDS
from services.runtime.trace_links import traceparent_of
from services.threading import codec
from services.threading.decision_report import report_decisions, report_sent_copies
from services.threading.domain.model import Decision
from services.threading.domain.model import Outcome as RuleOutcome
from services.threading.store.operations import (
    ChangeGmailState,
    GmailChangeResult,
    Operation,
    OperationResult,
    PlaceMessage,
    RecordPendingSend,
    RecordSendFailed,
    RecordSent,
)
from services.threading.store.values import Applied
from services.threading.sync import EventSink, MessageSync

_NORMALIZED = f"{subjects.PREFIX}.message.normalized."
_CHANGED = f"{subjects.PREFIX}.message.changed."
_PENDING = f"{subjects.PREFIX}.send.pending."
_SENT = f"{subjects.PREFIX}.send.sent."
_FAILED = f"{subjects.PREFIX}.send.failed."


@dataclass(frozen=True)
class WaitPolicy:
    """How long the rules may wait (R6: a CRM send's answer; R4: a parent message) before deciding anyway."""

    # Deliveries during which a message may still wait; the next one decides with what is known.
    budget: int = 6
    delay_seconds: float = 2.0
    # How long JetStream waits for an ack before redelivering (also after a replica crashed).
    ack_wait_seconds: float = 30.0
    # Messages fetched and applied in one transaction.
    batch_size: int = 256
    # How long a short fetch of the messages consumer waits once for more (ConsumerSpec.linger).
    linger_seconds: float = 0.0


def message_consumer_spec(policy: WaitPolicy) -> ConsumerSpec:
    return ConsumerSpec(
        stream=MESSAGES.name,
        durable="threading-messages",
        filter_subjects=(subjects.NORMALIZED_ALL, subjects.MESSAGE_CHANGED_ALL),
        ack_wait=policy.ack_wait_seconds,
        max_deliver=5,
        # One more than the budget, so the deciding delivery can still fail and be retried.
        max_waits=policy.budget + 1,
        batch=policy.batch_size,
        linger=policy.linger_seconds,
        max_ack_pending=max(1000, 4 * policy.batch_size),
    )


def send_consumer_spec(policy: WaitPolicy) -> ConsumerSpec:
    return ConsumerSpec(
        stream=SENDS.name,
        durable="threading-sends",
        filter_subjects=(subjects.SEND_PENDING_ALL, subjects.SEND_SENT_ALL, subjects.SEND_FAILED_ALL),
        ack_wait=policy.ack_wait_seconds,
        max_deliver=5,
        batch=policy.batch_size,
        max_ack_pending=max(1000, 4 * policy.batch_size),
    )


def outbox_events(clock: Clock | None = None) -> EventSink:
    """Stages `message.synced` and `contact.created` in the transaction that made them true (one statement)."""

    async def stage_events(session: AsyncSession, applied: Applied) -> None:
        events = [
            StagedEvent(
                subjects.message_synced(synced.location_id),
                codec.message_synced(synced),
                f"message-synced:{synced.message_id}",
            )
            for synced in applied.synced
        ] + [
            StagedEvent(
                subjects.contact_created(created.location_id),
                codec.contact_created(created),
                f"contact-created:{created.contact_id}",
            )
            for created in applied.created_contacts
        ]
        await stage_many(session, events, clock=clock)

    return stage_events


# Told once per committed batch what it changed (not called for a batch that placed nothing).
BatchApplied = Callable[[Applied], None]


class ThreadingHandlers:
    """The batch handlers for the messages stream (normalized, changed) and the sends stream (pending, sent,
    failed)."""

    def __init__(
        self,
        sync: MessageSync,
        *,
        policy: WaitPolicy | None = None,
        clock: Clock | None = None,
        on_applied: BatchApplied | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._sync = sync
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._policy = policy or WaitPolicy()
        self._clock = clock or SystemClock()
        self._on_applied = on_applied

    def _may_wait(self, delivery: Delivery) -> bool:
        return delivery.num_delivered <= self._policy.budget

    async def handle_message_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return await self._handle(deliveries, self._message_operation)

    async def handle_send_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return await self._handle(deliveries, self._send_operation)

    async def _handle(
        self, deliveries: Sequence[Delivery], decode: Callable[[Delivery], Operation]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(deliveries)
        operations: list[Operation] = []
        positions: list[int] = []
        for index, delivery in enumerate(deliveries):
            try:
                operations.append(decode(delivery))
            except Exception as exc:
                # Undecodable (or a subject this consumer should not get): this message fails, the batch goes on.
                outcomes[index] = exc
                continue
            positions.append(index)
        if not operations:
            return outcomes
        batch = await self._sync.apply_batch(operations)
        for index, result in zip(positions, batch.results, strict=True):
            outcomes[index] = self._outcome(deliveries[index], result)
        applied_deliveries = [deliveries[i] for i in positions]
        report_decisions(applied_deliveries, operations, batch.results, self._clock.now())
        report_sent_copies(applied_deliveries, operations, batch.applied.sent_copies, self._tracer)
        if self._on_applied is not None and (batch.applied.synced or batch.applied.created_contacts):
            self._on_applied(batch.applied)
        return outcomes

    def _outcome(self, delivery: Delivery, result: OperationResult) -> Outcome:
        if isinstance(result, Decision) and result.outcome is not RuleOutcome.DECIDED:
            return RetryLater(self._policy.delay_seconds, result.wait_reason)
        if isinstance(result, GmailChangeResult) and result.waits_for_message and self._may_wait(delivery):
            # The change overtook the message itself; give the message time to be placed.
            return RetryLater(self._policy.delay_seconds, "change of a message not seen yet")
        return None

    def _message_operation(self, delivery: Delivery) -> Operation:
        if delivery.subject.startswith(_NORMALIZED):
            event = delivery.parse(events_pb2.NormalizedMessage)
            return PlaceMessage(
                codec.incoming_message(event),
                codec.content_of(event),
                may_wait=self._may_wait(delivery),
                traceparent=traceparent_of(delivery.headers),
                mailbox_tier=mailbox_tier(event.mailbox_account_type),
            )
        if delivery.subject.startswith(_CHANGED):
            changed = delivery.parse(events_pb2.MessageChanged)
            deltas = bool(changed.labels_added or changed.labels_removed)
            full = (
                tuple(changed.gmail_state.label_ids)
                if changed.HasField("gmail_state") and not deltas
                else None
            )
            return ChangeGmailState(
                mailbox_id=changed.mailbox_id,
                gmail_message_id=changed.gmail_message_id,
                history_id=changed.history_id,
                labels=full,
                labels_added=tuple(changed.labels_added),
                labels_removed=tuple(changed.labels_removed),
                deleted=changed.kind == events_pb2.MESSAGE_CHANGE_KIND_DELETED or changed.gmail_state.deleted,
            )
        raise codec.UndecodableEvent(f"unexpected subject {delivery.subject}")

    def _send_operation(self, delivery: Delivery) -> Operation:
        if delivery.subject.startswith(_PENDING):
            pending = delivery.parse(events_pb2.PendingSend)
            send = codec.crm_send_of(pending, fallback_time=self._clock.now())
            return RecordPendingSend(send, codec.content_of(pending), traceparent_of(delivery.headers))
        if delivery.subject.startswith(_SENT):
            sent = delivery.parse(events_pb2.SentMessage)
            send = codec.crm_send_of(sent.send, fallback_time=self._clock.now())
            return RecordSent(
                send,
                codec.content_of(sent.send),
                gmail_message_id=sent.gmail_message_id,
                gmail_thread_id=sent.gmail_thread_id,
                final_rfc_message_id=sent.final_rfc_message_id,
                traceparent=traceparent_of(delivery.headers),
            )
        if delivery.subject.startswith(_FAILED):
            failed = delivery.parse(events_pb2.SendFailed)
            return RecordSendFailed(failed.send_id, failed.reason)
        raise codec.UndecodableEvent(f"unexpected subject {delivery.subject}")
