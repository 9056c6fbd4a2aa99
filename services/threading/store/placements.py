"""Rules in, rows out, for a whole batch: each operation is decided on the batch's `StoreView` (the pure rules of
`domain/`), and what it decides is applied to the view at once, so the next operation sees it, and collected as
rows in the batch's `ChangeSet`: placements, echo links, CRM sends, Gmail state changes, and the explanation of
every decision.

Operations are applied in the order given (stream order). A message that has to wait (its parent, R4; a CRM send's
answer, R6) or a Gmail change that overtook its message is tried again, in order, after the operations behind it
changed the view: the same result as a redelivery right after the batch, without the round trip.

Every row is keyed (derived ids, unique keys), so a redelivered or concurrently processed message changes nothing
twice: a copy decided before is a no-op, and a concurrent writer is caught by the change set's claims.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.threading.domain.addresses import normalize_email, normalize_message_id
from services.threading.domain.model import (
    Decision,
    Direction,
    EchoLink,
    IncomingMessage,
    LocationDecision,
    Outcome,
    Participant,
    Placement,
    Source,
    gmail_thread_key,
    message_key,
)
from services.threading.domain.rules import decide, place_crm_send
from services.threading.store.changes import ChangeSet, FeedDraft
from services.threading.store.contacts import sync_contact_id
from services.threading.store.models import (
    AttachmentRow,
    ContactEmailRow,
    ContactRow,
    ConversationRow,
    CrmSendRow,
    DecisionRow,
    MailboxCopyRow,
    MessageReferenceRow,
    MessageRfcIdRow,
    MessageRow,
    ParticipantRow,
    SeenMessageRow,
    ThreadKeyRow,
    ThreadMessageRow,
    ThreadRow,
    derived_id,
    table_of,
)
from services.threading.store.operations import (
    ChangeGmailState,
    GmailChangeResult,
    Operation,
    OperationResult,
    PlaceMessage,
    RecordPendingSend,
    RecordSendFailed,
    RecordSent,
    SendRecorded,
)
from services.threading.store.values import (
    CreatedContact,
    CrmSendInput,
    MessageContent,
    SentCopy,
    crm_message_key,
    seen_key_of,
    send_seen_key,
)
from services.threading.store.view import (
    ContactHit,
    CopyState,
    MessageState,
    SendState,
    StoreView,
    ThreadState,
)

_contacts = table_of(ContactRow)
_contact_emails = table_of(ContactEmailRow)
_conversations = table_of(ConversationRow)
_threads = table_of(ThreadRow)
_thread_keys = table_of(ThreadKeyRow)
_thread_messages = table_of(ThreadMessageRow)
_messages = table_of(MessageRow)
_participants = table_of(ParticipantRow)
_rfc_ids = table_of(MessageRfcIdRow)
_references = table_of(MessageReferenceRow)
_attachments = table_of(AttachmentRow)
_copies = table_of(MailboxCopyRow)
_seen = table_of(SeenMessageRow)
_decisions = table_of(DecisionRow)
_sends = table_of(CrmSendRow)


class StoreInconsistent(RuntimeError):
    """A row the store's own writes always create together with another is missing."""


@dataclass(frozen=True)
class _Landing:
    message_id: str
    conversation_id: str
    contact_id: str
    # False when the email was already stored (another copy, or a record placed before its CRM send, R6).
    created: bool = True


def is_waiting(result: OperationResult) -> bool:
    """Whether the operation did nothing yet because it waits for something another one may bring."""
    if isinstance(result, Decision):
        return result.outcome is not Outcome.DECIDED
    if isinstance(result, GmailChangeResult):
        return result.waits_for_message
    return False


class BatchPlacement:
    """Applies a batch's operations to its view, collecting the rows to write in `changes`."""

    def __init__(self, view: StoreView, changes: ChangeSet, *, now: dt.datetime) -> None:
        self._view = view
        self._changes = changes
        self._now = now

    def apply_all(self, operations: Sequence[Operation]) -> list[OperationResult]:
        """Every operation in order, then the waiting ones again (in order) while the view keeps changing."""
        results: list[OperationResult] = []
        tried_at: dict[int, int] = {}
        for index, operation in enumerate(operations):
            results.append(self._apply(operation))
            tried_at[index] = self._view.version
        waiting = [i for i, result in enumerate(results) if is_waiting(result)]
        while waiting:
            retried = [i for i in waiting if tried_at[i] < self._view.version]
            if not retried:
                break
            for index in retried:
                results[index] = self._apply(operations[index])
                tried_at[index] = self._view.version
            waiting = [i for i in waiting if is_waiting(results[i])]
        return results

    def _apply(self, operation: Operation) -> OperationResult:
        if isinstance(operation, PlaceMessage):
            return self.place(operation)
        if isinstance(operation, ChangeGmailState):
            return self.change_gmail_state(operation)
        if isinstance(operation, RecordSent):
            self.record_sent(operation)
        elif isinstance(operation, RecordPendingSend):
            self.record_pending_send(operation.send, operation.content, operation.traceparent)
        else:
            self.record_send_failed(operation)
        return SendRecorded()

    # Messages.

    def place(self, operation: PlaceMessage) -> Decision:
        """Decides where the message belongs and records it; a wait outcome records nothing."""
        message = operation.message
        key = message_key(message)
        seen_key = seen_key_of(message)
        if seen_key in self._view.seen_keys:
            # A copy is decided once, at first sight: a redelivery must not re-decide with what the store learned
            # since (that would make the result depend on redeliveries and arrival order).
            return Decision(Outcome.DECIDED, key)
        decision = decide(message, self._view.knowledge_for(message, key), may_wait=operation.may_wait)
        if decision.outcome is not Outcome.DECIDED:
            return decision
        landings = {
            placement.location_id: self._land(
                message, operation.content, placement, key, traceparent=operation.traceparent
            )
            for placement in sorted(decision.placements, key=lambda p: p.location_id)
        }
        if decision.echo is not None:
            self._link_echo(message, decision.echo)
        # R18: a subject is content, kept for explanations only when the copy synced somewhere.
        kept_subject = operation.content.subject if decision.placements or decision.echo is not None else ""
        self._record_seen(
            seen_key,
            message,
            kept_subject,
            [d.location_id for d in decision.decisions],
            claim=True,
        )
        self._record_explanations(seen_key, decision.decisions, landings, decision.echo)
        self._view.version += 1
        return decision

    def change_gmail_state(self, operation: ChangeGmailState) -> GmailChangeResult:
        """R17: records the Gmail state of every stored copy (read, trashed, deleted); never deletes a message.

        A change older than the copy's state (a lower history id) is ignored."""
        changed = 0
        for copy in self._view.copies_of(operation.mailbox_id, operation.gmail_message_id):
            if (
                operation.history_id
                and copy.state_history_id
                and operation.history_id < copy.state_history_id
            ):
                continue
            current = set(operation.labels) if operation.labels is not None else set(copy.labels)
            current |= set(operation.labels_added)
            current -= set(operation.labels_removed)
            copy.labels = sorted(current)
            copy.unread = "UNREAD" in current
            copy.trashed = "TRASH" in current
            copy.deleted = copy.deleted or operation.deleted
            copy.state_history_id = max(copy.state_history_id, operation.history_id)
            copy.update_time = self._now
            state = {
                "labels": list(copy.labels),
                "unread": copy.unread,
                "trashed": copy.trashed,
                "deleted": copy.deleted,
                "state_history_id": copy.state_history_id,
                "update_time": copy.update_time,
            }
            if copy.new_row is not None:
                copy.new_row.update(state)
            else:
                self._changes.set_copy_state(copy.message_id, copy.mailbox_id, state)
            changed += 1
        if changed:
            self._view.version += 1
        seen = (operation.mailbox_id, operation.gmail_message_id) in self._view.seen_copies
        return GmailChangeResult(changed=changed, seen=seen)

    def _land(
        self,
        message: IncomingMessage,
        content: MessageContent,
        placement: Placement,
        key: str,
        *,
        send_id: str = "",
        send_pending: bool = False,
        traceparent: str = "",
    ) -> _Landing:
        view, changes = self._view, self._changes
        location = placement.location_id
        contact_id = placement.contact_id
        if placement.new_contact is not None:
            contact_id = self._create_sync_contact(message, placement)
        thread_id, conversation_id, contact_id = self._resolve_thread(placement, contact_id, key)
        for alias in placement.thread.alias_keys:
            self._add_thread_key(location, alias, thread_id)
        stored_as = view.rfc_ids.get((location, message.message_id)) if message.message_id else None
        message_id = stored_as or derived_id("message", location, key)
        message_time = content.message_time or message.internal_time
        existing = view.messages.get(message_id)
        if existing is None:
            row = changes.insert(
                _messages,
                {
                    "message_id": message_id,
                    "location_id": location,
                    "dedup_key": key,
                    "conversation_id": conversation_id,
                    "contact_id": contact_id,
                    "rfc_message_id": message.message_id,
                    "direction": placement.direction.value,
                    "source": message.source.value,
                    "subject": content.subject,
                    "text_body": content.text_body,
                    "html_body": content.html_body,
                    "body_truncated": content.body_truncated,
                    "message_time": message_time,
                    "rule_id": placement.rule_id,
                    "send_id": send_id,
                    "send_pending": send_pending,
                    "create_time": self._now,
                    "superseded_by": "",
                },
                claim=True,
            )
            view.add_message(
                MessageState(
                    message_id,
                    location,
                    key,
                    conversation_id,
                    contact_id,
                    message_time,
                    message.message_id,
                    send_pending,
                    send_id,
                    new_row=row,
                )
            )
            self._write_message_parts(message, content, location, message_id, traceparent)
            changes.count_message(conversation_id, message_time)
            self._link_thread(thread_id, message_id, message_time)
            changes.feed.append(
                FeedDraft(
                    location,
                    message_id,
                    conversation_id,
                    thread_id,
                    contact_id,
                    message.message_id,
                    placement.direction,
                    message.source,
                    placement.rule_id,
                    self._now,
                )
            )
        else:
            # One email is one message of one conversation; a copy in another mailbox also links its thread.
            if existing.conversation_id == conversation_id:
                self._link_thread(thread_id, message_id, existing.message_time)
            conversation_id, contact_id = existing.conversation_id, existing.contact_id
        if message.source is Source.GMAIL_SYNC:
            self._add_gmail_copy(message, location, message_id)
        return _Landing(message_id, conversation_id, contact_id, created=existing is None)

    def _create_sync_contact(self, message: IncomingMessage, placement: Placement) -> str:
        """R9: the contact of a drop's first To recipient, created once (its id derives from the address)."""
        new = placement.new_contact
        assert new is not None
        location = placement.location_id
        contact_id = sync_contact_id(location, new.email)
        if (location, contact_id) in self._view.contact_ids:
            return contact_id
        # Version 0: the CRM's first upsert of the same id (version >= 1) merges into it.
        self._changes.insert(
            _contacts,
            {
                "location_id": location,
                "contact_id": contact_id,
                "display_name": new.display_name,
                "assigned_user_id": new.assigned_user_id,
                "create_time": self._now,
                "version": 0,
                "deleted": False,
                "created_by_sync": True,
                "update_time": self._now,
            },
            claim=True,
        )
        normalized = normalize_email(new.email)
        self._changes.insert(
            _contact_emails,
            {
                "location_id": location,
                "contact_id": contact_id,
                "normalized_email": normalized,
                "email": new.email.strip(),
                "is_primary": True,
                "position": 0,
            },
        )
        self._view.add_contact(ContactHit(contact_id, location, self._now, new.assigned_user_id), normalized)
        self._changes.created_contacts.append(
            CreatedContact(
                contact_id,
                location,
                new.email,
                new.display_name,
                new.assigned_user_id,
                message.message_id,
                self._now,
            )
        )
        return contact_id

    def _resolve_thread(self, placement: Placement, contact_id: str, key: str) -> tuple[str, str, str]:
        """(thread, conversation, contact) of a placement; a new thread is created at most once per key."""
        view = self._view
        location = placement.location_id
        target = placement.thread
        if target.existing_thread_id:
            found = view.threads.get(target.existing_thread_id)
            if found is not None and found.location_id == location:
                return found.thread_id, found.conversation_id, found.contact_id
        new_key = target.new_key or f"chain:{key}"
        mapped = view.thread_keys.get((location, new_key))
        if mapped is None:
            thread_id = derived_id("thread", location, new_key)
            self._add_thread_key(location, new_key, thread_id, claim=True)
            conversation_id = self._ensure_conversation(location, contact_id)
            origin = new_key.split(":", 1)[0]
            self._changes.insert(
                _threads,
                {
                    "thread_id": thread_id,
                    "location_id": location,
                    "conversation_id": conversation_id,
                    "origin": origin,
                    "create_time": self._now,
                },
            )
            view.add_thread(ThreadState(thread_id, location, conversation_id, contact_id, origin, self._now))
            self._changes.count_thread(conversation_id)
            return thread_id, conversation_id, contact_id
        found = view.threads.get(mapped)
        if found is None:
            raise StoreInconsistent(
                f"thread key {new_key!r} of {location} names thread {mapped}, which has no row"
            )
        return found.thread_id, found.conversation_id, found.contact_id

    def _ensure_conversation(self, location: str, contact_id: str) -> str:
        conversation_id = derived_id("conversation", location, contact_id)
        if conversation_id not in self._view.conversations:
            self._changes.insert(
                _conversations,
                {
                    "conversation_id": conversation_id,
                    "location_id": location,
                    "contact_id": contact_id,
                    "create_time": self._now,
                    "last_message_time": self._now.replace(year=1970, month=1, day=1),
                    "message_count": 0,
                    "thread_count": 0,
                },
            )
            self._view.conversations[conversation_id] = (location, contact_id)
        return conversation_id

    def _add_thread_key(self, location: str, key: str, thread_id: str, *, claim: bool = False) -> None:
        if (location, key) in self._view.thread_keys:
            return
        self._view.thread_keys[(location, key)] = thread_id
        self._changes.insert(
            _thread_keys, {"location_id": location, "key": key, "thread_id": thread_id}, claim=claim
        )

    def _link_thread(self, thread_id: str, message_id: str, when: dt.datetime) -> None:
        if thread_id in self._view.message_threads.get(message_id, ()):
            return
        self._view.link(thread_id, message_id)
        self._changes.insert(
            _thread_messages, {"thread_id": thread_id, "message_id": message_id, "message_time": when}
        )

    def _add_rfc_id(
        self, location: str, rfc_message_id: str, message_id: str, *, claim: bool = False
    ) -> None:
        if self._view.add_rfc_id(location, rfc_message_id, message_id):
            self._changes.insert(
                _rfc_ids,
                {"location_id": location, "rfc_message_id": rfc_message_id, "message_id": message_id},
                claim=claim,
            )

    def _write_message_parts(
        self,
        message: IncomingMessage,
        content: MessageContent,
        location: str,
        message_id: str,
        traceparent: str,
    ) -> None:
        changes = self._changes
        for p in _unique_participants(message.participants):
            changes.insert(
                _participants,
                {
                    "message_id": message_id,
                    "role": p.role.value,
                    "position": p.position,
                    "email": p.email,
                    "display_name": p.display_name,
                },
            )
        if message.message_id:
            # A claim: a send's message and a copy of the same email (R5) created side by side on two consumers
            # would otherwise both commit, as two messages under one Message-ID (the view loaded this key).
            self._add_rfc_id(location, message.message_id, message_id, claim=True)
        for rfc in message.referenced_ids:
            self._view.add_reference(location, rfc, message_id)
            changes.insert(
                _references, {"location_id": location, "referenced_rfc_id": rfc, "message_id": message_id}
            )
        gmail = message.source is Source.GMAIL_SYNC
        drop_id = message.bcc_drop.drop_id if message.bcc_drop else ""
        for a in content.attachments:
            changes.insert(
                _attachments,
                {
                    "message_id": message_id,
                    "attachment_id": a.attachment_id,
                    "location_id": location,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size_bytes": a.size_bytes,
                    "content_id": a.content_id,
                    "inline": a.inline,
                    "sha256": a.sha256,
                    "gmail_attachment_id": a.gmail_attachment_id,
                    "source_mailbox_id": message.mailbox_id if gmail else "",
                    "source_gmail_message_id": message.gmail_message_id if gmail else "",
                    "source_drop_id": drop_id,
                    "blob_sha256": "",
                    "fetch_attempts": 0,
                    "unavailable_reason": "",
                    "placed_traceparent": traceparent,
                    "retry_at": None,
                },
            )
            changes.attachments_to_fetch = True

    def _add_gmail_copy(self, message: IncomingMessage, location: str, message_id: str) -> None:
        labels = sorted(message.labels)
        self._add_copy(
            message_id,
            message.mailbox_id,
            location,
            message.gmail_message_id,
            message.gmail_thread_id,
            labels,
            history_id=message.history_id,
        )

    def _add_copy(
        self,
        message_id: str,
        mailbox_id: str,
        location: str,
        gmail_message_id: str,
        gmail_thread_id: str,
        labels: list[str],
        *,
        history_id: int,
    ) -> None:
        if (message_id, mailbox_id) in self._view.copies:
            return
        row = self._changes.insert(
            _copies,
            {
                "message_id": message_id,
                "mailbox_id": mailbox_id,
                "location_id": location,
                "gmail_message_id": gmail_message_id,
                "gmail_thread_id": gmail_thread_id,
                "labels": labels,
                "unread": "UNREAD" in labels,
                "trashed": "TRASH" in labels,
                "deleted": False,
                "state_history_id": history_id,
                "update_time": self._now,
            },
        )
        self._view.add_copy(
            CopyState(
                message_id,
                mailbox_id,
                location,
                gmail_message_id,
                gmail_thread_id,
                list(labels),
                "UNREAD" in labels,
                "TRASH" in labels,
                False,
                history_id,
                self._now,
                new_row=row,
            )
        )

    def _link_echo(self, message: IncomingMessage, echo: EchoLink) -> None:
        """The Gmail copy of a CRM send: its mailbox copy, Gmail thread and Message-ID now point at the stored message."""
        stored = self._view.messages.get(echo.message_id)
        if stored is None:
            return
        send = self._view.sends.get(echo.send_id)
        if send is not None:
            self._changes.sent_copies.append(
                SentCopy(message.mailbox_id, message.gmail_message_id, send.send_id, send.traceparent)
            )
        self._add_gmail_copy(message, stored.location_id, stored.message_id)
        if message.message_id:
            # Gmail's Message-ID wins whenever it becomes known (outbound may not have been able to read it):
            # it is the one every copy and every reply carries; ours stays an alias.
            renamed = message.message_id != stored.rfc_message_id
            if renamed:
                self._take_message_id(stored, send, message.message_id)
            # Another mailbox's copy placed under Gmail's id before it was known here is this email (R15).
            other = self._view.rfc_ids.get((stored.location_id, message.message_id))
            merged = self._merge_into(stored, [other], echo.send_id)
            self._add_rfc_id(stored.location_id, message.message_id, stored.message_id)
            if renamed and not merged:
                self._announce_revision(stored)
        self._alias_gmail_thread(stored, message.mailbox_id, message.gmail_thread_id)
        if send is not None and send.gmail_message_id == "":
            send.gmail_message_id = message.gmail_message_id
            send.gmail_thread_id = message.gmail_thread_id
            if send.new_row is not None:
                send.new_row.update(
                    gmail_message_id=message.gmail_message_id, gmail_thread_id=message.gmail_thread_id
                )
            else:
                self._changes.link_echo(echo.send_id, message.gmail_message_id, message.gmail_thread_id)

    def _alias_gmail_thread(self, stored: MessageState, mailbox_id: str, gmail_thread_id: str) -> None:
        if not gmail_thread_id:
            return
        thread_id = self._view.thread_of(stored.message_id)
        if thread_id:
            self._add_thread_key(stored.location_id, gmail_thread_key(mailbox_id, gmail_thread_id), thread_id)

    def _record_seen(
        self, seen_key: str, message: IncomingMessage, subject: str, locations: list[str], *, claim: bool
    ) -> None:
        self._changes.insert(
            _seen,
            {
                "seen_key": seen_key,
                "mailbox_id": message.mailbox_id,
                "gmail_message_id": message.gmail_message_id,
                "rfc_message_id": message.message_id,
                "subject": subject,
                "participants": [
                    {
                        "email": p.email,
                        "display_name": p.display_name,
                        "role": p.role.value,
                        "position": p.position,
                    }
                    for p in message.participants
                ],
                "location_ids": sorted(set(locations)),
                "first_seen": self._now,
            },
            claim=claim,
        )
        self._view.add_seen(seen_key, message.mailbox_id, message.gmail_message_id, message.message_id)

    def _record_explanations(
        self,
        seen_key: str,
        decisions: tuple[LocationDecision, ...],
        landings: dict[str, _Landing],
        echo: EchoLink | None,
    ) -> None:
        for item in decisions:
            landing = landings.get(item.location_id)
            message_id = landing.message_id if landing else ""
            conversation_id = landing.conversation_id if landing else ""
            if echo is not None and item.location_id == echo.location_id and item.synced:
                message_id = echo.message_id
                stored = self._view.messages.get(echo.message_id)
                conversation_id = stored.conversation_id if stored else ""
            self._changes.insert(
                _decisions,
                {
                    "seen_key": seen_key,
                    "location_id": item.location_id,
                    "synced": item.synced,
                    "rule_id": item.rule_id,
                    "reason": item.reason,
                    "contact_id": (landing.contact_id if landing else "") or item.contact_id,
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "decide_time": self._now,
                },
            )

    # CRM sends (R6).

    def record_pending_send(self, send: CrmSendInput, content: MessageContent, traceparent: str = "") -> None:
        """Records a CRM send in its location's conversation at once (once, whatever the redeliveries);
        `traceparent` is the send's trace, which its Sent copy and its attachments' fetch link to."""
        view = self._view
        recorded = view.sends.get(send.send_id)
        # `failed` came first (a redelivered `pending`): the attempt is still recorded, as failed.
        failed_first = recorded is not None and recorded.location_id == ""
        if recorded is not None and not failed_first:
            return
        rfc = normalize_message_id(send.rfc_message_id)
        if recorded is not None:
            state = recorded
            state.location_id, state.mailbox_id = send.location_id, send.mailbox_id
            state.rfc_message_id, state.gmail_thread_id = rfc, send.gmail_thread_id
            if state.new_row is None:
                self._changes.fill_send(state)
            row = state.new_row if state.new_row is not None else {}
            row.update(
                location_id=send.location_id,
                mailbox_id=send.mailbox_id,
                rfc_message_id=rfc,
                gmail_thread_id=send.gmail_thread_id,
            )
        else:
            row = self._changes.insert(
                _sends,
                {
                    "send_id": send.send_id,
                    "location_id": send.location_id,
                    "mailbox_id": send.mailbox_id,
                    "message_id": "",
                    "rfc_message_id": rfc,
                    "final_rfc_message_id": "",
                    "gmail_message_id": "",
                    "gmail_thread_id": send.gmail_thread_id,
                    "state": "pending",
                    "failure_reason": "",
                    "create_time": self._now,
                    "send_traceparent": traceparent,
                },
                claim=True,
            )
            state = SendState(
                send.send_id,
                send.location_id,
                send.mailbox_id,
                "",
                rfc,
                "",
                "",
                send.gmail_thread_id,
                "pending",
                traceparent=traceparent,
                new_row=row,
            )
            view.add_send(state)
        contact_id = conversation_id = ""
        if send.conversation_id:
            found = view.conversations.get(send.conversation_id)
            if found is not None and found[0] == send.location_id:
                conversation_id, contact_id = send.conversation_id, found[1]
        thread_id = ""
        if send.thread_id:
            thread = view.threads.get(send.thread_id)
            if thread is not None and thread.location_id == send.location_id:
                thread_id = send.thread_id
        decision = place_crm_send(
            send_id=send.send_id,
            location_id=send.location_id,
            recipients=send.participants,
            contacts=view.contacts_matching([send.location_id], [p.email for p in send.participants]),
            conversation_id=conversation_id,
            contact_id=contact_id,
            thread_id=thread_id,
            mailbox_id=send.mailbox_id,
            gmail_thread_id=send.gmail_thread_id,
        )
        message = send.as_message()
        landings: dict[str, _Landing] = {}
        if decision.placement is not None:
            landing = self._land(
                message,
                content,
                decision.placement,
                crm_message_key(send),
                send_id=send.send_id,
                send_pending=not failed_first,
                traceparent=traceparent,
            )
            state.message_id = landing.message_id
            row["message_id"] = landing.message_id
            landings[send.location_id] = landing
            if not landing.created:
                self._become_send(self._view.messages[landing.message_id], state)
        seen_key = send_seen_key(send.send_id)
        kept_subject = content.subject if landings else ""  # R18, as for a synced copy
        self._record_seen(seen_key, message, kept_subject, [send.location_id], claim=False)
        self._record_explanations(seen_key, (decision,), landings, None)
        view.version += 1

    def record_sent(self, operation: RecordSent) -> None:
        """Gmail accepted the send: its ids now recognise the echo (R6); works even if `pending` was never seen."""
        send = operation.send
        self.record_pending_send(send, operation.content, operation.traceparent)
        state = self._view.sends[send.send_id]
        final = normalize_message_id(operation.final_rfc_message_id)
        state.state = "sent"
        state.gmail_message_id = operation.gmail_message_id
        state.gmail_thread_id = operation.gmail_thread_id
        state.final_rfc_message_id = final
        if state.new_row is not None:
            state.new_row.update(
                state="sent",
                gmail_message_id=operation.gmail_message_id,
                gmail_thread_id=operation.gmail_thread_id,
                final_rfc_message_id=final,
            )
        else:
            self._changes.mark_sent(
                send.send_id, operation.gmail_message_id, operation.gmail_thread_id, final
            )
        stored = self._view.messages.get(state.message_id) if state.message_id else None
        if stored is not None:
            self._clear_send_pending(stored)
            # The Sent copy (or another mailbox's copy) may have been placed before this answer came: one message.
            view = self._view
            location = stored.location_id
            sent_copies = [c.message_id for c in view.copies_of(send.mailbox_id, operation.gmail_message_id)]
            # The Sent copy carries the Message-ID Gmail really gave the email, which outbound may not have read.
            gmails = [
                found.rfc_message_id
                for found in (view.messages.get(m) for m in sent_copies)
                if found is not None and found.location_id == location and found.rfc_message_id
            ]
            final = next((rfc for rfc in gmails if rfc != stored.rfc_message_id), final)
            renamed = bool(final) and final != stored.rfc_message_id
            if renamed:
                # Gmail's id is the one every copy carries from now on: it becomes the message's id, ours an alias.
                self._take_message_id(stored, state, final)
            others = [view.rfc_ids.get((location, rfc)) for rfc in (final, state.rfc_message_id) if rfc]
            merged = self._merge_into(stored, others + sent_copies, send.send_id)
            if final:
                self._add_rfc_id(stored.location_id, final, stored.message_id)
            if renamed and not merged:
                self._announce_revision(stored)
            self._alias_gmail_thread(stored, send.mailbox_id, operation.gmail_thread_id)
            self._add_copy(
                stored.message_id,
                send.mailbox_id,
                stored.location_id,
                operation.gmail_message_id,
                operation.gmail_thread_id,
                ["SENT"],
                history_id=0,
            )
        self._view.version += 1

    def record_send_failed(self, operation: RecordSendFailed) -> None:
        """The send certainly did not go out: it stops holding the mailbox's SENT copies (R6) and is marked failed."""
        state = self._view.sends.get(operation.send_id)
        if state is None:
            # Ahead of its `pending` (a redelivery): remembered, so the late `pending` records a failed attempt.
            row = self._changes.insert(
                _sends,
                {
                    "send_id": operation.send_id,
                    "location_id": "",
                    "mailbox_id": "",
                    "message_id": "",
                    "rfc_message_id": "",
                    "final_rfc_message_id": "",
                    "gmail_message_id": "",
                    "gmail_thread_id": "",
                    "state": "failed",
                    "failure_reason": operation.reason,
                    "create_time": self._now,
                    "send_traceparent": "",
                },
                claim=True,
            )
            self._view.add_send(
                SendState(
                    operation.send_id, "", "", "", "", "", "", "", "failed", operation.reason, new_row=row
                )
            )
            self._view.version += 1
            return
        if state.state == "sent":
            return
        state.state = "failed"
        state.failure_reason = operation.reason
        if state.new_row is not None:
            state.new_row.update(state="failed", failure_reason=operation.reason)
        else:
            self._changes.mark_failed(operation.send_id, operation.reason)
        stored = self._view.messages.get(state.message_id) if state.message_id else None
        if stored is not None:
            self._clear_send_pending(stored)
        self._view.version += 1

    # One CRM message per send, whatever the order (R6, R15).

    def _take_message_id(self, stored: MessageState, send: SendState | None, rfc_message_id: str) -> None:
        """The send's message is known by Gmail's Message-ID from now on (the send's too)."""
        stored.rfc_message_id = rfc_message_id
        if stored.new_row is not None:
            stored.new_row["rfc_message_id"] = rfc_message_id
        else:
            self._changes.change_rfc_message_id(stored.message_id, rfc_message_id)
        if send is not None and send.final_rfc_message_id != rfc_message_id:
            send.final_rfc_message_id = rfc_message_id
            if send.new_row is not None:
                send.new_row["final_rfc_message_id"] = rfc_message_id
            else:
                self._changes.set_final_rfc(send.send_id, rfc_message_id)

    def _become_send(self, stored: MessageState, send: SendState) -> None:
        """The send's Sent copy was placed (R5) before the send was recorded, under the Message-ID the send also
        carries: that record is the send's message, superseded in place (same id, now R6)."""
        if stored.send_id or stored.superseded_by or stored.location_id != send.location_id:
            return
        stored.send_id = send.send_id
        if stored.new_row is not None:
            stored.new_row.update(
                rule_id="R6",
                source=Source.CRM_SEND.value,
                direction=Direction.OUTBOUND.value,
                send_id=send.send_id,
            )
        else:
            self._changes.become_send(stored.message_id, send.send_id)
        self._announce_revision(stored)

    def _merge_into(self, survivor: MessageState, candidates: Iterable[str | None], send_id: str) -> int:
        """Records of the send's email placed before its answer came (its Sent copy by R5, a colleague's copy by R4
        or R2) become the send's message: each is marked superseded (kept, its id reads as the survivor), its
        mailbox copies, Message-IDs and explanations move over, and readers are told. Returns how many."""
        merged = 0
        for other_id in sorted({c for c in candidates if c} - {survivor.message_id}):
            other = self._view.messages.get(other_id)
            if other is None or other.location_id != survivor.location_id or other.superseded_by:
                continue
            self._supersede(other, survivor, send_id)
            merged += 1
        return merged

    def _supersede(self, other: MessageState, survivor: MessageState, send_id: str) -> None:
        view, changes = self._view, self._changes
        other.superseded_by = survivor.message_id
        if other.new_row is not None:
            other.new_row["superseded_by"] = survivor.message_id
        reason = (
            f"a copy of CRM send {send_id}, placed before the send's answer arrived; merged into the send's "
            f"message {survivor.message_id}"
        )
        changes.supersede(
            other.message_id, survivor.message_id, survivor.conversation_id, survivor.contact_id, reason
        )
        changes.uncount_message(other.conversation_id)
        if other.conversation_id == survivor.conversation_id:
            # Replies that followed the early record's thread stay with the message (one conversation, R4).
            for thread_id in sorted(view.message_threads.get(other.message_id, ())):
                self._link_thread(thread_id, survivor.message_id, survivor.message_time)
        for copy in view.copies_of_message(other.message_id):
            if (survivor.message_id, copy.mailbox_id) in view.copies:
                continue
            if copy.new_row is not None:
                copy.new_row["message_id"] = survivor.message_id
            else:
                changes.move_copy(other.message_id, copy.mailbox_id, survivor.message_id)
            view.move_copy(copy, survivor.message_id)
        for key, owner in list(view.rfc_ids.items()):
            if owner == other.message_id:
                view.rfc_ids[key] = survivor.message_id
        self._announce_revision(survivor, supersedes=other.message_id)

    def _announce_revision(self, stored: MessageState, *, supersedes: str = "") -> None:
        """WatchMessages and `message.synced` tell readers what changed about a message they were told of."""
        if stored.new_row is not None and not supersedes:
            # Announced by this very batch: its entry is written with the message as it ends up.
            for draft in self._changes.feed:
                if draft.message_id == stored.message_id and not draft.revised:
                    draft.rfc_message_id = stored.rfc_message_id
                    draft.rule_id = str(stored.new_row["rule_id"])
                    draft.source = Source(stored.new_row["source"])
            return
        self._changes.feed.append(
            FeedDraft(
                stored.location_id,
                stored.message_id,
                stored.conversation_id,
                self._view.thread_of(stored.message_id) or "",
                stored.contact_id,
                stored.rfc_message_id,
                Direction.OUTBOUND,
                Source.CRM_SEND,
                "R6",
                self._now,
                revised=True,
                supersedes_message_id=supersedes,
            )
        )

    def _clear_send_pending(self, stored: MessageState) -> None:
        stored.send_pending = False
        if stored.new_row is not None:
            stored.new_row["send_pending"] = False
        else:
            self._changes.clear_send_pending(stored.message_id)


def _unique_participants(participants: tuple[Participant, ...]) -> list[Participant]:
    seen: dict[tuple[str, int], Participant] = {}
    for p in participants:
        seen.setdefault((p.role.value, p.position), p)
    return list(seen.values())
