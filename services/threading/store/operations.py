"""What one delivery asks of the threading store, as a value: place a message, apply a Gmail state change, or
record a step of a CRM send. A batch of operations is applied in order, in one transaction (`sync.MessageSync`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.threading.domain.model import Decision, IncomingMessage
from services.threading.store.values import CrmSendInput, MessageContent


@dataclass(frozen=True)
class PlaceMessage:
    """A normalized message: decided by the rules (or found waiting) and stored where they place it."""

    message: IncomingMessage
    content: MessageContent
    # False once the message was redelivered as often as the wait budget allows: the rules then decide anyway.
    may_wait: bool = True
    # The W3C traceparent of the message's trace, kept with its attachments for the fetch to link to.
    traceparent: str = ""
    # The tier of the mailbox the copy came from (consumer, workspace, unknown): a label of the decisions metric.
    mailbox_tier: str = "unknown"


@dataclass(frozen=True)
class ChangeGmailState:
    """R17: labels, read state, trash or deletion of a Gmail message, for every stored copy of it."""

    mailbox_id: str
    gmail_message_id: str
    history_id: int
    # The full label set when known; otherwise the deltas apply to the stored labels.
    labels: tuple[str, ...] | None = None
    labels_added: tuple[str, ...] = ()
    labels_removed: tuple[str, ...] = ()
    deleted: bool = False


@dataclass(frozen=True)
class RecordPendingSend:
    """R6: a CRM send outbound is about to hand to Gmail."""

    send: CrmSendInput
    content: MessageContent
    # The W3C traceparent of the send's trace, kept with the send for its Sent copy to link to.
    traceparent: str = ""


@dataclass(frozen=True)
class RecordSent:
    """R6: Gmail accepted a CRM send (its ids recognise the echo from now on)."""

    send: CrmSendInput
    content: MessageContent
    gmail_message_id: str
    gmail_thread_id: str
    final_rfc_message_id: str
    traceparent: str = ""


@dataclass(frozen=True)
class RecordSendFailed:
    """R6: a CRM send certainly did not go out."""

    send_id: str
    reason: str


Operation = PlaceMessage | ChangeGmailState | RecordPendingSend | RecordSent | RecordSendFailed


@dataclass(frozen=True)
class GmailChangeResult:
    # Copies whose state changed.
    changed: int
    # Whether a copy with this Gmail id was ever handed to the rules (placed or not).
    seen: bool

    @property
    def waits_for_message(self) -> bool:
        """The change overtook its message: nothing to change and the message was never seen."""
        return self.changed == 0 and not self.seen


@dataclass(frozen=True)
class SendRecorded:
    """A send step was recorded (or found already recorded)."""


# Per operation, in order: a Decision for PlaceMessage, GmailChangeResult, or SendRecorded.
OperationResult = Decision | GmailChangeResult | SendRecorded
