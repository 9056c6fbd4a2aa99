"""The NATS subjects of mailsync, built in one place so every publisher and consumer spells them the same way.

Subjects are versioned and carry the partition key (a mailbox or location id) last; the key is validated so an id
can never add a token or a wildcard to a subject.
"""

from __future__ import annotations

import re

PREFIX = "mailsync.v1"

# A subject token: no dots (token separator), no wildcards, no whitespace; ids are opaque but plain.
_TOKEN = re.compile(r"[A-Za-z0-9_\-:@+=]{1,200}")

CONNECTION_KINDS = frozenset({"connected", "replaced", "disconnected", "reauth_required", "reauthorized"})


class InvalidSubjectToken(ValueError):
    """An id cannot be used as a subject token."""


def token(value: str) -> str:
    """Returns the value if it is a safe subject token, else raises InvalidSubjectToken."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidSubjectToken(f"not a valid NATS subject token: {value!r}")
    return value


def mailbox_changed(mailbox_id: str) -> str:
    return f"{PREFIX}.mailbox.changed.{token(mailbox_id)}"


def normalized(mailbox_id: str) -> str:
    return f"{PREFIX}.message.normalized.{token(mailbox_id)}"


def message_changed(mailbox_id: str) -> str:
    return f"{PREFIX}.message.changed.{token(mailbox_id)}"


def send_pending(mailbox_id: str) -> str:
    return f"{PREFIX}.send.pending.{token(mailbox_id)}"


def send_sent(mailbox_id: str) -> str:
    return f"{PREFIX}.send.sent.{token(mailbox_id)}"


def send_failed(mailbox_id: str) -> str:
    return f"{PREFIX}.send.failed.{token(mailbox_id)}"


def connection(kind: str, mailbox_id: str) -> str:
    if kind not in CONNECTION_KINDS:
        raise InvalidSubjectToken(
            f"unknown connection event kind {kind!r}: one of {sorted(CONNECTION_KINDS)}"
        )
    return f"{PREFIX}.connection.{kind}.{token(mailbox_id)}"


def contact_created(location_id: str) -> str:
    return f"{PREFIX}.contact.created.{token(location_id)}"


def message_synced(location_id: str) -> str:
    return f"{PREFIX}.message.synced.{token(location_id)}"


# Filters for consumers (every partition of one kind of event).
MAILBOX_CHANGED_ALL = f"{PREFIX}.mailbox.changed.*"
NORMALIZED_ALL = f"{PREFIX}.message.normalized.*"
MESSAGE_CHANGED_ALL = f"{PREFIX}.message.changed.*"
SEND_PENDING_ALL = f"{PREFIX}.send.pending.*"
SEND_SENT_ALL = f"{PREFIX}.send.sent.*"
SEND_FAILED_ALL = f"{PREFIX}.send.failed.*"
CONNECTION_ALL = f"{PREFIX}.connection.*.*"
CONTACT_CREATED_ALL = f"{PREFIX}.contact.created.*"
MESSAGE_SYNCED_ALL = f"{PREFIX}.message.synced.*"


# Event kinds whose partition key is a location (every other kind is partitioned by mailbox).
_LOCATION_KEYED = ("contact.created", "message.synced")


def kind_of(subject: str) -> str:
    """The subject without its version prefix and partition key (`mailbox.changed`): what span names and metric
    labels use, since the key would make them unbounded."""
    body = subject.removeprefix(f"{PREFIX}.")
    if body == subject:
        return subject
    kind, _, _key = body.rpartition(".")
    return kind or body


def key_attributes(subject: str) -> dict[str, str]:
    """The partition key of a subject as a span attribute (`mailsync.mailbox_id` or `mailsync.location_id`)."""
    kind = kind_of(subject)
    if kind == subject:
        return {}
    key = subject.rpartition(".")[2]
    return {"mailsync.location_id" if kind in _LOCATION_KEYED else "mailsync.mailbox_id": key}
