"""Translation between the protobuf contracts (events and API) and the threading service's own values, so the
consumers and the servicer stay thin and no ORM row or domain object ever leaks into a proto by accident."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from mailsync.v1 import common_pb2, events_pb2
from services.threading.domain.model import (
    BccDrop,
    ConnectionSnapshot,
    ConnectionState,
    Direction,
    IncomingMessage,
    Participant,
    Role,
    Source,
)
from services.threading.store.placements import (
    AttachmentInfo,
    CreatedContact,
    CrmSendInput,
    MessageContent,
    SyncedMessage,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_ROLES = {
    common_pb2.PARTICIPANT_ROLE_FROM: Role.FROM,
    common_pb2.PARTICIPANT_ROLE_TO: Role.TO,
    common_pb2.PARTICIPANT_ROLE_CC: Role.CC,
    common_pb2.PARTICIPANT_ROLE_BCC: Role.BCC,
    common_pb2.PARTICIPANT_ROLE_DELIVERED_TO: Role.DELIVERED_TO,
    common_pb2.PARTICIPANT_ROLE_REPLY_TO: Role.REPLY_TO,
    common_pb2.PARTICIPANT_ROLE_SENDER: Role.SENDER,
}
_ROLE_NUMBERS = {role: number for number, role in _ROLES.items()}
_STATES = {
    common_pb2.CONNECTION_STATE_CONNECTED: ConnectionState.CONNECTED,
    common_pb2.CONNECTION_STATE_REAUTH_REQUIRED: ConnectionState.REAUTH_REQUIRED,
    common_pb2.CONNECTION_STATE_REPLACED: ConnectionState.REPLACED,
    common_pb2.CONNECTION_STATE_DISCONNECTED: ConnectionState.DISCONNECTED,
}
_SOURCES = {
    common_pb2.MESSAGE_SOURCE_GMAIL_SYNC: Source.GMAIL_SYNC,
    common_pb2.MESSAGE_SOURCE_BCC_DROP: Source.BCC_DROP,
    common_pb2.MESSAGE_SOURCE_CRM_SEND: Source.CRM_SEND,
}
_SOURCE_NUMBERS = {source: number for number, source in _SOURCES.items()}
DIRECTION_NUMBERS = {
    Direction.INBOUND: common_pb2.DIRECTION_INBOUND,
    Direction.OUTBOUND: common_pb2.DIRECTION_OUTBOUND,
}


class UndecodableEvent(ValueError):
    """The event lacks what the rules need (a poison message: dead-lettered, not retried forever)."""


def to_datetime(stamp: Timestamp) -> dt.datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=dt.UTC)


def to_timestamp(when: dt.datetime | None) -> Timestamp:
    stamp = Timestamp()
    if when is not None and when > _EPOCH:
        stamp.FromDatetime(when)
    return stamp


def participants_of(items: object) -> tuple[Participant, ...]:
    return tuple(
        Participant(p.email, _ROLES[p.role], p.position, p.display_name)
        for p in items  # type: ignore[attr-defined]
        if p.role in _ROLES and p.email
    )


def participant_proto(participant: Participant) -> common_pb2.Participant:
    return common_pb2.Participant(
        email=participant.email,
        display_name=participant.display_name,
        role=_ROLE_NUMBERS[participant.role],
        position=participant.position,
    )


def source_number(source: Source) -> int:
    return _SOURCE_NUMBERS[source]


def incoming_message(event: events_pb2.NormalizedMessage) -> IncomingMessage:
    """The rules' view of a normalized message."""
    if not event.mailbox_id and not event.HasField("bcc_drop"):
        raise UndecodableEvent("normalized message without a mailbox or a BCC drop")
    source = _SOURCES.get(event.source, Source.GMAIL_SYNC)
    drop = None
    if event.HasField("bcc_drop") and event.bcc_drop.location_id:
        drop = BccDrop(
            drop_id=event.bcc_drop.drop_id,
            location_id=event.bcc_drop.location_id,
            sender_user_id=event.bcc_drop.sender_user_id,
            content_digest=event.bcc_drop.content_digest,
        )
        source = Source.BCC_DROP
    internal_time = to_datetime(event.internal_time) or to_datetime(event.observe_time)
    if internal_time is None:
        raise UndecodableEvent(
            f"message {event.gmail_message_id or event.rfc_message_id} has no internal time"
        )
    direction = Direction.OUTBOUND if event.direction == common_pb2.DIRECTION_OUTBOUND else Direction.INBOUND
    return IncomingMessage(
        mailbox_id=event.mailbox_id,
        mailbox_email=event.mailbox_email,
        gmail_message_id=event.gmail_message_id,
        gmail_thread_id=event.gmail_thread_id,
        rfc_message_id=event.rfc_message_id,
        direction=Direction.OUTBOUND if source is Source.BCC_DROP else direction,
        source=source,
        internal_time=internal_time,
        participants=participants_of(event.participants),
        labels=frozenset(event.label_ids),
        in_reply_to=tuple(event.in_reply_to),
        references=tuple(event.references),
        history_id=event.history_id,
        connections=tuple(
            ConnectionSnapshot(
                connection_id=c.connection_id,
                user_id=c.user_id,
                location_id=c.location_id,
                state=_STATES.get(c.state, ConnectionState.DISCONNECTED),
                start_time=to_datetime(c.start_time),
                start_history_id=c.start_history_id,
                state_change_time=to_datetime(c.state_change_time),
            )
            for c in event.connections
            if c.location_id
        ),
        bcc_drop=drop,
    )


def attachments_of(items: object) -> tuple[AttachmentInfo, ...]:
    return tuple(
        AttachmentInfo(
            attachment_id=a.attachment_id,
            filename=a.filename,
            content_type=a.content_type,
            size_bytes=a.size_bytes,
            content_id=a.content_id,
            inline=a.inline,
            sha256=a.sha256,
            gmail_attachment_id=a.gmail_attachment_id,
        )
        for a in items  # type: ignore[attr-defined]
    )


def content_of(event: events_pb2.NormalizedMessage | events_pb2.PendingSend) -> MessageContent:
    message_time = None
    if isinstance(event, events_pb2.NormalizedMessage):
        message_time = to_datetime(event.header_date) or to_datetime(event.internal_time)
    else:
        message_time = to_datetime(event.create_time)
    return MessageContent(
        subject=event.subject,
        text_body=event.text_body,
        html_body=event.html_body,
        body_truncated=event.body_truncated,
        attachments=attachments_of(event.attachments),
        message_time=message_time,
    )


def crm_send_of(event: events_pb2.PendingSend, *, fallback_time: dt.datetime) -> CrmSendInput:
    if not event.send_id or not event.location_id or not event.mailbox_id:
        raise UndecodableEvent("a send event needs send_id, location_id and mailbox_id")
    return CrmSendInput(
        send_id=event.send_id,
        location_id=event.location_id,
        mailbox_id=event.mailbox_id,
        user_id=event.user_id,
        rfc_message_id=event.rfc_message_id,
        participants=participants_of(event.participants),
        create_time=to_datetime(event.create_time) or fallback_time,
        conversation_id=event.conversation_id,
        thread_id=event.thread_id,
        gmail_thread_id=event.gmail_thread_id,
        in_reply_to=tuple(event.in_reply_to),
        references=tuple(event.references),
    )


def message_synced(synced: SyncedMessage) -> events_pb2.MessageSynced:
    return events_pb2.MessageSynced(
        location_id=synced.location_id,
        message_id=synced.message_id,
        conversation_id=synced.conversation_id,
        thread_id=synced.thread_id,
        contact_id=synced.contact_id,
        rfc_message_id=synced.rfc_message_id,
        direction=DIRECTION_NUMBERS[synced.direction],
        source=source_number(synced.source),
        rule_id=synced.rule_id,
        sync_time=to_timestamp(synced.sync_time),
    )


def contact_created(created: CreatedContact) -> events_pb2.ContactCreated:
    return events_pb2.ContactCreated(
        contact_id=created.contact_id,
        location_id=created.location_id,
        email=created.email,
        display_name=created.display_name,
        assigned_user_id=created.assigned_user_id,
        source_rfc_message_id=created.source_rfc_message_id,
        create_time=to_timestamp(created.create_time),
    )
