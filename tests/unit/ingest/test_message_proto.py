"""The NormalizedMessage event carries every field of the domain value, and what the worker adds."""

from __future__ import annotations

import datetime as dt

from mailsync.v1 import common_pb2, events_pb2
from services.ingest.bcc_drop import AcceptedDrop
from services.ingest.domain.bcc import AuthenticatedAuthor
from services.ingest.domain.message import MailboxCopy, MessageSource
from services.ingest.domain.mime import normalize_message
from services.ingest.message_proto import bcc_drop_event, bcc_drop_to_proto, normalized_message_to_proto
from tests.fixtures import mime_samples

RECEIVED = dt.datetime(2026, 11, 3, 9, 16, tzinfo=dt.UTC)


def test_event_carries_gmail_copy_participants_attachments_and_flags() -> None:
    copy = MailboxCopy(
        mailbox_id="mb-1",
        mailbox_email="bob@example.org",
        gmail_message_id="g-1",
        gmail_thread_id="t-1",
        history_id=42,
        label_ids=("INBOX",),
        internal_time=RECEIVED,
    )
    mail = normalize_message(mime_samples.forwarded_as_attachment(), copy=copy)
    connection = common_pb2.ConnectionSnapshot(connection_id="c-1", location_id="loc-1")

    event = normalized_message_to_proto(mail, connections=[connection], observe_time=RECEIVED)
    decoded = events_pb2.NormalizedMessage.FromString(event.SerializeToString())

    assert (decoded.mailbox_id, decoded.gmail_message_id, decoded.gmail_thread_id, decoded.history_id) == (
        "mb-1",
        "g-1",
        "t-1",
        42,
    )
    assert decoded.direction == common_pb2.DIRECTION_INBOUND
    assert decoded.source == common_pb2.MESSAGE_SOURCE_GMAIL_SYNC
    assert decoded.internal_time.ToDatetime(dt.UTC) == RECEIVED
    assert decoded.header_date.ToDatetime(dt.UTC) == dt.datetime(2026, 11, 3, 9, 15, tzinfo=dt.UTC)
    assert [(p.email, p.role, p.position) for p in decoded.participants] == [
        ("alice@example.com", common_pb2.PARTICIPANT_ROLE_FROM, 0),
        ("bob@example.org", common_pb2.PARTICIPANT_ROLE_TO, 0),
        ("carol@example.net", common_pb2.PARTICIPANT_ROLE_TO, 1),
    ]
    (attachment,) = decoded.attachments
    assert (attachment.attachment_id, attachment.content_type) == ("2", "message/rfc822")
    assert attachment.sha256 == mail.attachments[0].sha256
    assert decoded.forwarded and decoded.rfc_message_id == "<fwd@example.com>"
    assert list(decoded.connections) == [connection]
    assert decoded.size_bytes == mail.size_bytes and decoded.snippet == mail.snippet
    assert not decoded.HasField("bcc_drop")


def test_bcc_drop_event_is_outbound_and_carries_the_drop() -> None:
    raw = mime_samples.plain()
    mail = normalize_message(raw, source=MessageSource.BCC_DROP)
    author = AuthenticatedAuthor("alice@example.com", "example.com", "dmarc", "example.com")
    accepted = AcceptedDrop("d-1", "loc-1", "u-1", "bcc+t@drop.example", author, "ab" * 32, raw)
    drop = bcc_drop_to_proto(accepted)

    event = normalized_message_to_proto(mail, bcc_drop=drop)

    assert event.direction == common_pb2.DIRECTION_OUTBOUND
    assert event.source == common_pb2.MESSAGE_SOURCE_BCC_DROP
    assert event.bcc_drop == events_pb2.BccDropInfo(
        drop_id="d-1",
        location_id="loc-1",
        sender_user_id="u-1",
        envelope_recipient="bcc+t@drop.example",
        content_digest="ab" * 32,
    )
    assert not event.HasField("internal_time")


def test_defects_travel_with_the_event() -> None:
    mail = normalize_message(b"Subject: x\r\nContent-Type: text/plain; charset=x-no-such\r\n\r\nbody")

    assert list(normalized_message_to_proto(mail).defects) == ["charset_unknown:x-no-such"]


def test_an_admitted_drop_becomes_its_normalized_event() -> None:
    raw = mime_samples.plain()
    author = AuthenticatedAuthor("alice@example.com", "example.com", "dkim-verified", "example.com")
    accepted = AcceptedDrop("d-2", "loc-9", "u-3", "bcc+t@drop.example", author, "cd" * 32, raw)

    event = bcc_drop_event(accepted, observe_time=RECEIVED)

    assert (event.source, event.direction) == (
        common_pb2.MESSAGE_SOURCE_BCC_DROP,
        common_pb2.DIRECTION_OUTBOUND,
    )
    assert (event.bcc_drop.drop_id, event.bcc_drop.location_id, event.bcc_drop.sender_user_id) == (
        "d-2",
        "loc-9",
        "u-3",
    )
    assert event.rfc_message_id == "<m1@example.com>" and event.subject == "Quarterly numbers"
    assert event.observe_time.ToDatetime(dt.UTC) == RECEIVED
