"""NATS handlers of the threading service: decode an event, run it through MessageSync (rules + store in one
transaction, events staged in the same transaction through the outbox), and let the runtime's consumer loop ack
after the commit. Waiting outcomes of the rules become RetryLater; undecodable events fail and are dead-lettered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from mailsync.v1 import events_pb2
from services.runtime import subjects
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import ConsumerSpec, Delivery, RetryLater
from services.runtime.outbox import stage
from services.runtime.streams import MESSAGES, SENDS
from services.threading import codec
from services.threading.domain.model import Outcome
from services.threading.store.placements import Applied
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


def message_consumer_spec(policy: WaitPolicy) -> ConsumerSpec:
    return ConsumerSpec(
        stream=MESSAGES.name,
        durable="threading-messages",
        filter_subjects=(subjects.NORMALIZED_ALL, subjects.MESSAGE_CHANGED_ALL),
        ack_wait=policy.ack_wait_seconds,
        max_deliver=5,
        # One more than the budget, so the deciding delivery can still fail and be retried.
        max_waits=policy.budget + 1,
    )


def send_consumer_spec(policy: WaitPolicy) -> ConsumerSpec:
    return ConsumerSpec(
        stream=SENDS.name,
        durable="threading-sends",
        filter_subjects=(subjects.SEND_PENDING_ALL, subjects.SEND_SENT_ALL, subjects.SEND_FAILED_ALL),
        ack_wait=policy.ack_wait_seconds,
        max_deliver=5,
    )


def outbox_events(clock: Clock | None = None) -> EventSink:
    """Stages `message.synced` and `contact.created` in the transaction that made them true."""

    async def stage_events(session: AsyncSession, applied: Applied) -> None:
        for synced in applied.synced:
            await stage(
                session,
                subjects.message_synced(synced.location_id),
                codec.message_synced(synced),
                f"message-synced:{synced.message_id}",
                clock=clock,
            )
        for created in applied.created_contacts:
            await stage(
                session,
                subjects.contact_created(created.location_id),
                codec.contact_created(created),
                f"contact-created:{created.contact_id}",
                clock=clock,
            )

    return stage_events


class ThreadingHandlers:
    """The handlers for the messages stream (normalized, changed) and the sends stream (pending, sent, failed)."""

    def __init__(
        self,
        sync: MessageSync,
        *,
        policy: WaitPolicy | None = None,
        clock: Clock | None = None,
        on_placed: Callable[[], None] | None = None,
    ) -> None:
        self._sync = sync
        self._policy = policy or WaitPolicy()
        self._clock = clock or SystemClock()
        self._on_placed = on_placed

    def _may_wait(self, delivery: Delivery) -> bool:
        return delivery.num_delivered <= self._policy.budget

    async def handle_message_event(self, delivery: Delivery) -> None:
        if delivery.subject.startswith(_NORMALIZED):
            await self._normalized(delivery)
        elif delivery.subject.startswith(_CHANGED):
            await self._changed(delivery)
        else:
            raise codec.UndecodableEvent(f"unexpected subject {delivery.subject}")

    async def handle_send_event(self, delivery: Delivery) -> None:
        if delivery.subject.startswith(_PENDING):
            event = delivery.parse(events_pb2.PendingSend)
            send = codec.crm_send_of(event, fallback_time=self._clock.now())
            applied = await self._sync.apply_pending_send(send, codec.content_of(event))
        elif delivery.subject.startswith(_SENT):
            sent = delivery.parse(events_pb2.SentMessage)
            send = codec.crm_send_of(sent.send, fallback_time=self._clock.now())
            applied = await self._sync.apply_sent(
                send,
                codec.content_of(sent.send),
                gmail_message_id=sent.gmail_message_id,
                gmail_thread_id=sent.gmail_thread_id,
                final_rfc_message_id=sent.final_rfc_message_id,
            )
        elif delivery.subject.startswith(_FAILED):
            failed = delivery.parse(events_pb2.SendFailed)
            await self._sync.apply_send_failed(failed.send_id, failed.reason)
            return
        else:
            raise codec.UndecodableEvent(f"unexpected subject {delivery.subject}")
        if applied.synced and self._on_placed:
            self._on_placed()

    async def _normalized(self, delivery: Delivery) -> None:
        event = delivery.parse(events_pb2.NormalizedMessage)
        message = codec.incoming_message(event)
        decision = await self._sync.apply_message(
            message, codec.content_of(event), may_wait=self._may_wait(delivery)
        )
        if decision.outcome is not Outcome.DECIDED:
            raise RetryLater(self._policy.delay_seconds, decision.wait_reason)
        if decision.placements and self._on_placed:
            self._on_placed()

    async def _changed(self, delivery: Delivery) -> None:
        event = delivery.parse(events_pb2.MessageChanged)
        deltas = bool(event.labels_added or event.labels_removed)
        full = tuple(event.gmail_state.label_ids) if event.HasField("gmail_state") and not deltas else None
        changed = await self._sync.apply_gmail_change(
            mailbox_id=event.mailbox_id,
            gmail_message_id=event.gmail_message_id,
            history_id=event.history_id,
            labels=full,
            labels_added=tuple(event.labels_added),
            labels_removed=tuple(event.labels_removed),
            deleted=event.kind == events_pb2.MESSAGE_CHANGE_KIND_DELETED or event.gmail_state.deleted,
        )
        if changed == 0 and self._may_wait(delivery):
            if not await self._sync.has_seen(event.mailbox_id, event.gmail_message_id):
                # The change overtook the message itself; give the message time to be placed.
                raise RetryLater(self._policy.delay_seconds, "change of a message not seen yet")
