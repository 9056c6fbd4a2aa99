"""The sandbox's mail model: mailboxes, messages, threads, labels, history with gaps, delivery and threading.

Pure apart from the clock and the seeded random source it is given: no I/O, no asyncio, no HTTP.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parseaddr
from typing import Any

from sandbox import mime
from sandbox.errors import GoogleApiError, bad_request, not_found, sending_limit

SYSTEM_LABEL_IDS = [
    "CHAT",
    "SENT",
    "INBOX",
    "IMPORTANT",
    "TRASH",
    "DRAFT",
    "SPAM",
    "CATEGORY_FORUMS",
    "CATEGORY_UPDATES",
    "CATEGORY_PERSONAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_SOCIAL",
    "STARRED",
    "UNREAD",
]
_HIDDEN_IN_LIST = {
    "CHAT",
    "CATEGORY_FORUMS",
    "CATEGORY_UPDATES",
    "CATEGORY_PERSONAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_SOCIAL",
}
UNSETTABLE_LABELS = {"SENT", "DRAFT", "CHAT"}
INBOUND_LABELS = ("INBOX", "UNREAD", "CATEGORY_PERSONAL")
DAY_MS = 86_400_000

HistoryKind = str  # "messageAdded" | "messageDeleted" | "labelAdded" | "labelRemoved"
HISTORY_KINDS = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")


@dataclass
class Label:
    id: str
    name: str
    type: str = "user"
    message_list_visibility: str = "show"
    label_list_visibility: str = "labelShow"

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"id": self.id, "name": self.name, "type": self.type}
        if self.type == "user" or self.id not in _HIDDEN_IN_LIST:
            body["messageListVisibility"] = self.message_list_visibility
            body["labelListVisibility"] = self.label_list_visibility
        return body


@dataclass
class StoredMessage:
    """One message in one mailbox; the raw bytes are shared between the copies of a delivery."""

    id: str
    thread_id: str
    label_ids: list[str]
    raw: bytes
    parsed: mime.ParsedMessage
    internal_date_ms: int
    history_id: int
    rfc_message_id: str
    # When the message was stored in its mailbox (what Gmail's search index catches up with).
    stored_at_ms: int = 0

    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "threadId": self.thread_id, "labelIds": list(self.label_ids)}


@dataclass
class HistoryRecord:
    id: int
    kind: HistoryKind
    message: dict[str, Any]
    changed_labels: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        short = {"id": self.message["id"], "threadId": self.message["threadId"]}
        body: dict[str, object] = {"id": str(self.id), "messages": [short]}
        if self.kind == "messageAdded":
            body["messagesAdded"] = [{"message": self.message}]
        elif self.kind == "messageDeleted":
            body["messagesDeleted"] = [{"message": self.message}]
        elif self.kind == "labelAdded":
            body["labelsAdded"] = [{"message": self.message, "labelIds": self.changed_labels}]
        else:
            body["labelsRemoved"] = [{"message": self.message, "labelIds": self.changed_labels}]
        return body


@dataclass
class OutboxEntry:
    """A message that left the sandbox for an address no sandbox mailbox owns."""

    id: int
    sender: str
    recipients: list[str]
    raw: bytes
    rfc_message_id: str
    subject: str
    sent_at_ms: int


@dataclass
class Mailbox:
    address: str
    password: str
    workspace: bool
    daily_send_limit: int
    display_name: str = ""
    credential_epoch: int = 0
    history_id: int = 0
    history_floor: int = 0
    history: list[HistoryRecord] = field(default_factory=list)
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, Label] = field(default_factory=dict)
    by_rfc_id: dict[str, list[str]] = field(default_factory=dict)
    sends_ms: deque[int] = field(default_factory=deque)

    def message(self, message_id: str) -> StoredMessage:
        found = self.messages.get(message_id)
        if found is None:
            raise not_found()
        return found

    def thread_messages(self, thread_id: str) -> list[StoredMessage]:
        ids = self.threads.get(thread_id)
        if not ids:
            raise not_found()
        return [self.messages[i] for i in ids]

    def profile(self) -> dict[str, object]:
        return {
            "emailAddress": self.address,
            "messagesTotal": len(self.messages),
            "threadsTotal": len(self.threads),
            "historyId": str(self.history_id),
        }


@dataclass
class SendResult:
    sent: StoredMessage
    deliveries: list[tuple[Mailbox, StoredMessage]]
    outbox: OutboxEntry | None


ChangeListener = Callable[[Mailbox, HistoryRecord], None]


def _record_id(record: HistoryRecord) -> int:
    return record.id


class MailState:
    """Every mailbox of the sandbox plus the outside world's outbox."""

    def __init__(self, now_ms: Callable[[], int], rng: random.Random, history_gap_max: int = 20) -> None:
        self.now_ms = now_ms
        self.rng = rng
        self.history_gap_max = history_gap_max
        self.mailboxes: dict[str, Mailbox] = {}
        self.outbox: list[OutboxEntry] = []
        self.listeners: list[ChangeListener] = []
        self._sequence = 0

    # -- mailboxes -------------------------------------------------------------------------------------------

    def create_mailbox(
        self,
        address: str,
        password: str,
        workspace: bool = False,
        daily_send_limit: int | None = None,
        display_name: str = "",
    ) -> Mailbox:
        key = address.lower()
        if key in self.mailboxes:
            raise bad_request(f"Mailbox {address} already exists.")
        limit = daily_send_limit if daily_send_limit is not None else (2000 if workspace else 500)
        mailbox = Mailbox(
            address=key,
            password=password,
            workspace=workspace,
            daily_send_limit=limit,
            display_name=display_name,
        )
        mailbox.history_id = self.rng.randint(1_000, 90_000)
        mailbox.history_floor = mailbox.history_id
        for label_id in SYSTEM_LABEL_IDS:
            mailbox.labels[label_id] = Label(id=label_id, name=label_id, type="system")
        self.mailboxes[key] = mailbox
        return mailbox

    def mailbox(self, address: str) -> Mailbox:
        found = self.mailboxes.get(address.lower())
        if found is None:
            raise not_found()
        return found

    def change_password(self, address: str, password: str) -> None:
        mailbox = self.mailbox(address)
        mailbox.password = password
        mailbox.credential_epoch += 1

    # -- ids and history -------------------------------------------------------------------------------------

    def _new_message_id(self) -> str:
        self._sequence += 1
        return f"{self.now_ms() & 0xFFFFFFFFFFF:011x}{self._sequence & 0xFFFFF:05x}"

    def _next_history_id(self, mailbox: Mailbox) -> int:
        mailbox.history_id += self.rng.randint(1, self.history_gap_max)
        return mailbox.history_id

    def _record(
        self, mailbox: Mailbox, kind: HistoryKind, message: StoredMessage, changed: list[str] | None = None
    ) -> HistoryRecord:
        record = HistoryRecord(
            id=self._next_history_id(mailbox), kind=kind, message=message.ref(), changed_labels=changed or []
        )
        message.history_id = record.id
        mailbox.history.append(record)
        for listener in self.listeners:
            listener(mailbox, record)
        return record

    def expire_history(self, address: str, before: int) -> int:
        """Forget history records older than `before`; a startHistoryId below the new floor gets 404."""
        mailbox = self.mailbox(address)
        mailbox.history_floor = max(mailbox.history_floor, before)
        mailbox.history = [r for r in mailbox.history if r.id >= mailbox.history_floor]
        return mailbox.history_floor

    def list_history(
        self,
        mailbox: Mailbox,
        start: int,
        kinds: set[str] | None,
        label_id: str | None,
        max_results: int,
        after: int | None = None,
    ) -> tuple[list[HistoryRecord], int | None]:
        """Records after `start` (or after the page cursor `after`), oldest first, and the next cursor."""
        if start < mailbox.history_floor:
            raise not_found()
        cursor = max(start, after or start)
        selected: list[HistoryRecord] = []
        # Records are kept in id order: start right after the cursor instead of scanning the whole history.
        first = bisect.bisect_right(mailbox.history, cursor, key=_record_id)
        for record in itertools.islice(mailbox.history, first, None):
            if kinds and record.kind not in kinds:
                continue
            if (
                label_id
                and label_id not in record.message["labelIds"]
                and label_id not in record.changed_labels
            ):
                continue
            if len(selected) == max_results:
                return selected, selected[-1].id
            selected.append(record)
        return selected, None

    # -- storing messages ------------------------------------------------------------------------------------

    def _new_message(
        self,
        raw: bytes,
        parsed: mime.ParsedMessage,
        labels: Iterable[str],
        thread_id: str | None,
        internal_date_ms: int | None = None,
    ) -> StoredMessage:
        """A message with its ids assigned, not yet in any mailbox."""
        message_id = self._new_message_id()
        return StoredMessage(
            id=message_id,
            thread_id=thread_id or message_id,
            label_ids=list(dict.fromkeys(labels)),
            raw=raw,
            parsed=parsed,
            internal_date_ms=internal_date_ms or self.now_ms(),
            history_id=0,
            rfc_message_id=(mime.message_ids(parsed.header("Message-ID")) or [""])[0],
        )

    def commit(self, mailbox: Mailbox, message: StoredMessage) -> StoredMessage:
        """Put a message in its mailbox and thread, and write its messageAdded history record."""
        message.stored_at_ms = self.now_ms()
        mailbox.messages[message.id] = message
        mailbox.threads.setdefault(message.thread_id, []).append(message.id)
        if message.rfc_message_id:
            mailbox.by_rfc_id.setdefault(message.rfc_message_id, []).append(message.id)
        self._record(mailbox, "messageAdded", message)
        return message

    def _store(
        self,
        mailbox: Mailbox,
        raw: bytes,
        parsed: mime.ParsedMessage,
        labels: Iterable[str],
        thread_id: str | None,
        internal_date_ms: int | None = None,
    ) -> StoredMessage:
        return self.commit(mailbox, self._new_message(raw, parsed, labels, thread_id, internal_date_ms))

    def _thread_by_headers(self, mailbox: Mailbox, parsed: mime.ParsedMessage) -> str | None:
        """Inbound threading: a referenced Message-ID known in this mailbox and a matching subject."""
        referenced = mime.message_ids(parsed.header("References")) + mime.message_ids(
            parsed.header("In-Reply-To")
        )
        subject = mime.normalized_subject(parsed.header("Subject"))
        for rfc_id in reversed(referenced):
            for known_id in mailbox.by_rfc_id.get(rfc_id, []):
                known = mailbox.messages.get(known_id)
                if known and mime.normalized_subject(known.parsed.header("Subject")) == subject:
                    return known.thread_id
        return None

    def _thread_for_send(
        self, mailbox: Mailbox, parsed: mime.ParsedMessage, thread_id: str | None
    ) -> str | None:
        """The documented rule: threadId given, In-Reply-To/References name a message of it, subjects match."""
        if not thread_id:
            return None
        if thread_id not in mailbox.threads:
            raise not_found()
        members = mailbox.thread_messages(thread_id)
        referenced = set(
            mime.message_ids(parsed.header("References")) + mime.message_ids(parsed.header("In-Reply-To"))
        )
        if not referenced & {m.rfc_message_id for m in members}:
            return None
        subject = mime.normalized_subject(parsed.header("Subject"))
        if all(mime.normalized_subject(m.parsed.header("Subject")) != subject for m in members):
            return None
        return thread_id

    def deliver_inbound(
        self,
        address: str,
        raw: bytes,
        label_ids: Iterable[str] | None = None,
        internal_date_ms: int | None = None,
    ) -> StoredMessage:
        """Mail from the outside world arriving in a mailbox."""
        mailbox = self.mailbox(address)
        parsed = mime.parse(raw)
        thread_id = self._thread_by_headers(mailbox, parsed)
        labels = list(label_ids) if label_ids is not None else list(INBOUND_LABELS)
        self._check_labels(mailbox, labels, allow_system=True)
        return self._store(mailbox, raw, parsed, labels, thread_id, internal_date_ms)

    def insert(
        self,
        mailbox: Mailbox,
        raw: bytes,
        label_ids: list[str],
        thread_id: str | None,
        thread_by_headers: bool,
    ) -> StoredMessage:
        """messages.insert / messages.import: store without sending."""
        parsed = mime.parse(raw)
        self._check_labels(mailbox, label_ids, allow_system=True)
        chosen = thread_id if thread_id and thread_id in mailbox.threads else None
        if chosen is None and thread_by_headers:
            chosen = self._thread_by_headers(mailbox, parsed)
        return self._store(mailbox, raw, parsed, label_ids, chosen)

    def check_send_allowed(self, mailbox: Mailbox) -> None:
        """Gmail's daily sending limit over a rolling 24 hours, with its own 429 text."""
        now = self.now_ms()
        while mailbox.sends_ms and mailbox.sends_ms[0] <= now - DAY_MS:
            mailbox.sends_ms.popleft()
        if len(mailbox.sends_ms) >= mailbox.daily_send_limit:
            retry_at = datetime.fromtimestamp((mailbox.sends_ms[0] + DAY_MS) / 1000, tz=UTC)
            raise sending_limit(
                retry_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{retry_at.microsecond // 1000:03d}Z"
            )

    def prepare_send(self, mailbox: Mailbox, raw: bytes, replace_message_id: bool) -> bytes:
        """The headers Gmail fixes on the way out: From, Date, Message-ID."""
        parsed = mime.parse(raw)
        recipients = mime.addresses(parsed.header("To"), parsed.header("Cc"), parsed.header("Bcc"))
        if not recipients:
            raise bad_request("Invalid To header")
        remove: set[str] = set()
        add: list[tuple[str, str]] = []
        name, sender = parseaddr(parsed.header("From") or "")
        if sender.lower() != mailbox.address:
            remove.add("From")
            display = name or mailbox.display_name
            add.append(("From", f"{display} <{mailbox.address}>" if display else mailbox.address))
        if not parsed.header("Date"):
            add.append(("Date", format_datetime(datetime.fromtimestamp(self.now_ms() / 1000, tz=UTC))))
        if replace_message_id or not mime.message_ids(parsed.header("Message-ID")):
            remove.add("Message-ID")
            add.append(("Message-ID", mime.new_message_id()))
        return mime.edit_headers(raw, remove, add) if (remove or add) else raw

    def send(
        self,
        mailbox: Mailbox,
        raw: bytes,
        thread_id: str | None,
        replace_message_id: bool,
        deliver_sent_copy: bool = True,
    ) -> SendResult:
        """messages.send: the sender's SENT copy, INBOX copies for sandbox recipients, the outbox for others."""
        self.check_send_allowed(mailbox)
        prepared = self.prepare_send(mailbox, raw, replace_message_id)
        parsed = mime.parse(prepared)
        chosen_thread = self._thread_for_send(mailbox, parsed, thread_id)
        recipients = list(
            dict.fromkeys(mime.addresses(parsed.header("To"), parsed.header("Cc"), parsed.header("Bcc")))
        )
        labels = ["SENT"]
        if mailbox.address in recipients:
            labels += ["INBOX", "UNREAD"]
        mailbox.sends_ms.append(self.now_ms())
        # In after-response mode the SENT copy gets its ids now and is committed later by the caller.
        sent = self._new_message(prepared, parsed, labels, chosen_thread)
        if deliver_sent_copy:
            self.commit(mailbox, sent)
        delivered_raw = mime.edit_headers(prepared, {"Bcc"}, []) if parsed.header("Bcc") else prepared
        deliveries: list[tuple[Mailbox, StoredMessage]] = []
        external: list[str] = []
        for recipient in recipients:
            if recipient == mailbox.address:
                continue
            target = self.mailboxes.get(recipient)
            if target is None:
                external.append(recipient)
                continue
            deliveries.append((target, self.deliver_inbound(recipient, delivered_raw)))
        entry = None
        if external:
            entry = OutboxEntry(
                id=len(self.outbox) + 1,
                sender=mailbox.address,
                recipients=external,
                raw=delivered_raw,
                rfc_message_id=sent.rfc_message_id,
                subject=parsed.header("Subject") or "",
                sent_at_ms=self.now_ms(),
            )
            self.outbox.append(entry)
        return SendResult(sent=sent, deliveries=deliveries, outbox=entry)

    # -- label changes ---------------------------------------------------------------------------------------

    def _check_labels(self, mailbox: Mailbox, label_ids: Iterable[str], allow_system: bool = False) -> None:
        for label_id in label_ids:
            if label_id not in mailbox.labels:
                raise bad_request(f"Invalid label: {label_id}", reason="invalidArgument")
            if not allow_system and label_id in UNSETTABLE_LABELS:
                raise bad_request(f"Invalid label: {label_id}", reason="invalidArgument")

    def modify(self, mailbox: Mailbox, message_id: str, add: list[str], remove: list[str]) -> StoredMessage:
        message = mailbox.message(message_id)
        if len(add) > 100 or len(remove) > 100:
            raise bad_request("Too many label ids", reason="invalidArgument")
        self._check_labels(mailbox, add)
        self._check_labels(mailbox, remove)
        added = [label for label in dict.fromkeys(add) if label not in message.label_ids]
        removed = [
            label for label in dict.fromkeys(remove) if label in message.label_ids and label not in added
        ]
        if added:
            message.label_ids.extend(added)
            self._record(mailbox, "labelAdded", message, added)
        if removed:
            message.label_ids = [label for label in message.label_ids if label not in removed]
            self._record(mailbox, "labelRemoved", message, removed)
        return message

    def trash(self, mailbox: Mailbox, message_id: str) -> StoredMessage:
        message = mailbox.message(message_id)
        if "TRASH" not in message.label_ids:
            message.label_ids.append("TRASH")
            self._record(mailbox, "labelAdded", message, ["TRASH"])
        return message

    def untrash(self, mailbox: Mailbox, message_id: str) -> StoredMessage:
        message = mailbox.message(message_id)
        if "TRASH" in message.label_ids:
            message.label_ids.remove("TRASH")
            self._record(mailbox, "labelRemoved", message, ["TRASH"])
        return message

    def delete(self, mailbox: Mailbox, message_id: str) -> None:
        message = mailbox.message(message_id)
        del mailbox.messages[message_id]
        members = mailbox.threads[message.thread_id]
        members.remove(message_id)
        if not members:
            del mailbox.threads[message.thread_id]
        if message.rfc_message_id in mailbox.by_rfc_id:
            mailbox.by_rfc_id[message.rfc_message_id].remove(message_id)
        self._record(mailbox, "messageDeleted", message)

    def create_label(
        self,
        mailbox: Mailbox,
        name: str,
        message_list_visibility: str = "show",
        label_list_visibility: str = "labelShow",
    ) -> Label:
        clean = name.strip()
        if not clean or clean.upper() in SYSTEM_LABEL_IDS:
            raise bad_request("Invalid label name", reason="invalidArgument")
        if any(existing.name.lower() == clean.lower() for existing in mailbox.labels.values()):
            raise GoogleApiError(409, "duplicate", "Label name exists or conflicts")
        label = Label(
            id=f"Label_{len(mailbox.labels) - len(SYSTEM_LABEL_IDS) + 1}",
            name=clean,
            message_list_visibility=message_list_visibility,
            label_list_visibility=label_list_visibility,
        )
        mailbox.labels[label.id] = label
        return label
