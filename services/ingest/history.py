"""From a page of Gmail history records to what the sync worker must do (pure: no I/O).

Gmail reports changes as history records (reference/gmail_api.md section 2): messages added and deleted, labels
added and removed, in increasing history id. The worker fetches the added messages it has not published yet,
publishes label changes and deletions of messages it did publish (R17), and skips what the rules say never
syncs: messages added at or before the earliest connection start (R1), drafts and chats (not email).
Spam and trash are still published, without content, so threading can explain why they did not sync (R16).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NOT_EMAIL_LABELS = frozenset({"DRAFT", "CHAT"})
UNSYNCED_LABELS = frozenset({"SPAM", "TRASH"})


class SkipReason(StrEnum):
    BEFORE_CONNECTION = "before_connection"
    NOT_EMAIL = "not_email"
    DELETED_BEFORE_FETCH = "deleted_before_fetch"
    ALREADY_PUBLISHED = "already_published"


@dataclass(frozen=True)
class MessageToFetch:
    gmail_message_id: str
    gmail_thread_id: str
    # The history record that added the message: R1 compares it with each connection's start.
    added_history_id: int
    label_ids: frozenset[str]

    @property
    def content_withheld(self) -> bool:
        """Spam and trash travel without bodies: only what R16 needs to explain them."""
        return bool(self.label_ids & UNSYNCED_LABELS)


@dataclass(frozen=True)
class LabelDelta:
    gmail_message_id: str
    history_id: int
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True)
class Deletion:
    gmail_message_id: str
    history_id: int


@dataclass
class SyncPlan:
    fetch: list[MessageToFetch] = field(default_factory=list)
    label_deltas: list[LabelDelta] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    skipped: dict[str, SkipReason] = field(default_factory=dict)


def plan_history(
    records: Iterable[Mapping[str, Any]],
    *,
    earliest_start_history_id: int,
    published: frozenset[str] | set[str],
) -> SyncPlan:
    """Turns history records (Gmail's JSON shape) into a plan; `published` = gmail ids already published."""
    plan = SyncPlan()
    pending: dict[str, MessageToFetch] = {}
    deltas: dict[str, LabelDelta] = {}
    for record in sorted(records, key=lambda r: int(r.get("id", 0))):
        history_id = int(record.get("id", 0))
        for added in record.get("messagesAdded", ()):
            _plan_added(
                plan, pending, added.get("message", {}), history_id, earliest_start_history_id, published
            )
        for change_key, is_add in (("labelsAdded", True), ("labelsRemoved", False)):
            for change in record.get(change_key, ()):
                message = change.get("message", {})
                gmail_id = message.get("id")
                if not gmail_id:
                    continue
                labels = frozenset(change.get("labelIds", ()))
                if gmail_id in pending:
                    pending[gmail_id] = _with_labels(pending[gmail_id], labels, is_add)
                    continue
                if gmail_id not in published:
                    if not is_add and labels & UNSYNCED_LABELS and history_id > earliest_start_history_id:
                        # Moved out of spam/trash after the connection began: it is mail now (R1).
                        current = frozenset(message.get("labelIds", ())) - labels
                        _plan_added(
                            plan,
                            pending,
                            {**message, "labelIds": sorted(current)},
                            history_id,
                            earliest_start_history_id,
                            published,
                        )
                    continue
                deltas[gmail_id] = _merge_delta(deltas.get(gmail_id), gmail_id, history_id, labels, is_add)
        for deleted in record.get("messagesDeleted", ()):
            gmail_id = deleted.get("message", {}).get("id")
            if not gmail_id:
                continue
            if gmail_id in pending:
                del pending[gmail_id]
                plan.skipped[gmail_id] = SkipReason.DELETED_BEFORE_FETCH
            elif gmail_id in published:
                deltas.pop(gmail_id, None)
                plan.deletions.append(Deletion(gmail_id, history_id))
    plan.fetch = sorted(pending.values(), key=lambda m: m.added_history_id)
    plan.label_deltas = sorted(deltas.values(), key=lambda d: d.history_id)
    return plan


def _plan_added(
    plan: SyncPlan,
    pending: dict[str, MessageToFetch],
    message: Mapping[str, Any],
    history_id: int,
    earliest_start_history_id: int,
    published: frozenset[str] | set[str],
) -> None:
    gmail_id = message.get("id")
    if not gmail_id or gmail_id in pending:
        return
    labels = frozenset(message.get("labelIds", ()))
    if gmail_id in published:
        plan.skipped[gmail_id] = SkipReason.ALREADY_PUBLISHED
    elif history_id <= earliest_start_history_id:
        plan.skipped[gmail_id] = SkipReason.BEFORE_CONNECTION
    elif labels & NOT_EMAIL_LABELS:
        plan.skipped[gmail_id] = SkipReason.NOT_EMAIL
    else:
        plan.skipped.pop(gmail_id, None)
        pending[gmail_id] = MessageToFetch(gmail_id, str(message.get("threadId", "")), history_id, labels)


def _with_labels(message: MessageToFetch, labels: frozenset[str], is_add: bool) -> MessageToFetch:
    new_labels = message.label_ids | labels if is_add else message.label_ids - labels
    return MessageToFetch(
        message.gmail_message_id, message.gmail_thread_id, message.added_history_id, new_labels
    )


def _merge_delta(
    previous: LabelDelta | None, gmail_id: str, history_id: int, labels: frozenset[str], is_add: bool
) -> LabelDelta:
    added = previous.added if previous else frozenset()
    removed = previous.removed if previous else frozenset()
    if is_add:
        added, removed = added | labels, removed - labels
    else:
        added, removed = added - labels, removed | labels
    return LabelDelta(gmail_id, history_id, added, removed)
