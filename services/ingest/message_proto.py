"""Translates the domain's `NormalizedMail` into the `NormalizedMessage` event published on NATS."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from mailsync.v1 import common_pb2, events_pb2
from services.ingest.bcc_drop import AcceptedDrop
from services.ingest.domain.message import (
    Attachment,
    Direction,
    MessageSource,
    NormalizedMail,
    Participant,
    ParticipantRole,
)
from services.ingest.domain.mime import normalize_message
from services.runtime import subjects
from services.runtime.protobuf_time import to_timestamp

_DIRECTIONS = {
    Direction.INBOUND: common_pb2.DIRECTION_INBOUND,
    Direction.OUTBOUND: common_pb2.DIRECTION_OUTBOUND,
}
_SOURCES = {
    MessageSource.GMAIL_SYNC: common_pb2.MESSAGE_SOURCE_GMAIL_SYNC,
    MessageSource.BCC_DROP: common_pb2.MESSAGE_SOURCE_BCC_DROP,
    MessageSource.CRM_SEND: common_pb2.MESSAGE_SOURCE_CRM_SEND,
}
_ROLES = {
    ParticipantRole.FROM: common_pb2.PARTICIPANT_ROLE_FROM,
    ParticipantRole.SENDER: common_pb2.PARTICIPANT_ROLE_SENDER,
    ParticipantRole.REPLY_TO: common_pb2.PARTICIPANT_ROLE_REPLY_TO,
    ParticipantRole.TO: common_pb2.PARTICIPANT_ROLE_TO,
    ParticipantRole.CC: common_pb2.PARTICIPANT_ROLE_CC,
    ParticipantRole.BCC: common_pb2.PARTICIPANT_ROLE_BCC,
    ParticipantRole.DELIVERED_TO: common_pb2.PARTICIPANT_ROLE_DELIVERED_TO,
}


def participant_to_proto(participant: Participant) -> common_pb2.Participant:
    return common_pb2.Participant(
        email=participant.email,
        display_name=participant.display_name,
        role=_ROLES[participant.role],
        position=participant.position,
    )


def attachment_to_proto(attachment: Attachment) -> common_pb2.AttachmentDescriptor:
    return common_pb2.AttachmentDescriptor(
        attachment_id=attachment.part_path,
        filename=attachment.filename,
        content_type=attachment.content_type,
        size_bytes=attachment.size_bytes,
        content_id=attachment.content_id,
        inline=attachment.inline,
        sha256=attachment.sha256,
    )


def normalized_message_to_proto(
    mail: NormalizedMail,
    *,
    connections: Iterable[common_pb2.ConnectionSnapshot] = (),
    bcc_drop: events_pb2.BccDropInfo | None = None,
    observe_time: dt.datetime | None = None,
    mailbox_account_type: int = 0,
) -> events_pb2.NormalizedMessage:
    """The event for `mail`; the worker supplies what MIME does not know (connections, drop, observation)."""
    event = events_pb2.NormalizedMessage(
        mailbox_id=mail.copy.mailbox_id,
        mailbox_email=mail.copy.mailbox_email,
        gmail_message_id=mail.copy.gmail_message_id,
        gmail_thread_id=mail.copy.gmail_thread_id,
        history_id=mail.copy.history_id,
        rfc_message_id=mail.rfc_message_id,
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        direction=_DIRECTIONS[mail.direction],
        label_ids=mail.copy.label_ids,
        participants=[participant_to_proto(p) for p in mail.participants],
        subject=mail.subject,
        text_body=mail.text_body,
        html_body=mail.html_body,
        body_truncated=mail.body_truncated,
        attachments=[attachment_to_proto(a) for a in mail.attachments],
        source=_SOURCES[mail.source],
        connections=list(connections),
        auto_submitted=mail.auto_submitted,
        list_mail=mail.list_mail,
        forwarded=mail.forwarded,
        defects=mail.defects,
        size_bytes=mail.size_bytes,
        snippet=mail.snippet,
        mailbox_account_type=mailbox_account_type,
    )
    if mail.copy.internal_time is not None:
        event.internal_time.CopyFrom(to_timestamp(mail.copy.internal_time))
    if mail.header_date is not None:
        event.header_date.CopyFrom(to_timestamp(mail.header_date))
    if bcc_drop is not None:
        event.bcc_drop.CopyFrom(bcc_drop)
    if observe_time is not None:
        event.observe_time.CopyFrom(to_timestamp(observe_time))
    return event


def bcc_drop_to_proto(drop: AcceptedDrop) -> events_pb2.BccDropInfo:
    """The drop part of the NormalizedMessage of an admitted BCC drop (normalize it with source=BCC_DROP)."""
    return events_pb2.BccDropInfo(
        drop_id=drop.drop_id,
        location_id=drop.location_id,
        sender_user_id=drop.sender_user_id,
        envelope_recipient=drop.envelope_recipient,
        content_digest=drop.content_digest,
    )


def bcc_drop_event(
    drop: AcceptedDrop, *, observe_time: dt.datetime | None = None
) -> events_pb2.NormalizedMessage:
    """The NormalizedMessage an admitted drop is published as: outbound, source BCC_DROP, with its drop info."""
    mail = normalize_message(drop.raw, source=MessageSource.BCC_DROP)
    return normalized_message_to_proto(mail, bcc_drop=bcc_drop_to_proto(drop), observe_time=observe_time)


def refused_drop_event(
    head: bytes,
    *,
    drop_id: str,
    location_id: str,
    refusal_reason: str,
    content_digest: str,
    size_bytes: int,
    observe_time: dt.datetime,
) -> events_pb2.NormalizedMessage:
    """The NormalizedMessage a refused drop is published as, so threading can explain the refusal (R16): from the
    header block of `head` only, and of that only ids and addresses (R18: no subject, body or attachment of a
    drop that syncs nowhere ever leaves ingest)."""
    mail = normalize_message(_header_block(head), source=MessageSource.BCC_DROP)
    event = events_pb2.NormalizedMessage(
        rfc_message_id=mail.rfc_message_id,
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        direction=common_pb2.DIRECTION_OUTBOUND,
        participants=[participant_to_proto(p) for p in mail.participants],
        source=common_pb2.MESSAGE_SOURCE_BCC_DROP,
        size_bytes=size_bytes,
        bcc_drop=events_pb2.BccDropInfo(
            drop_id=drop_id,
            location_id=location_id,
            content_digest=content_digest,
            refusal_reason=refusal_reason,
        ),
    )
    if mail.header_date is not None:
        event.header_date.CopyFrom(to_timestamp(mail.header_date))
    event.observe_time.CopyFrom(to_timestamp(observe_time))
    return event


def _header_block(head: bytes) -> bytes:
    # A refusal may come before the message was complete (the SMTP session's limits): its first bytes, cut at the
    # blank line that ends the header, so the body is never parsed.
    return head[: 256 * 1024].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\r\n\r\n"


def drop_subject(location_id: str) -> str:
    """Drops share the normalized-message stream; their partition is the location (no mailbox)."""
    return subjects.normalized(f"drop-{location_id}")


def drop_msg_id(location_id: str, content_digest: str) -> str:
    """The same content dropped twice into one location is one event (R15)."""
    return f"drop:{location_id}:{content_digest}"


def refused_drop_msg_id(location_id: str, drop_id: str) -> str:
    """Every refusal is its own record (the same text may be refused, fixed and accepted later)."""
    return f"drop-refused:{location_id}:{drop_id}"
