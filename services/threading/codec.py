"""Translation between the protobuf contracts (events and API) and the threading service's own values, so the
consumers and the servicer stay thin and no ORM row or domain object ever leaks into a proto by accident."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mailsync.v1 import common_pb2, events_pb2, threading_pb2
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
from services.threading.store.contacts import ContactEmail, ContactRecord
from services.threading.store.reads import (
    ConversationView,
    Explanation,
    FeedEntry,
    MessageView,
    ParticipantView,
    RefusedDropView,
)
from services.threading.store.values import (
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
_SOURCE_NUMBERS: dict[Source, Any] = {source: number for number, source in _SOURCES.items()}
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


def source_number(source: Source) -> Any:
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
            rejection_reason=event.bcc_drop.refusal_reason,
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
        revised=synced.revised,
        supersedes_message_id=synced.supersedes_message_id,
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


_ROLE_BY_NAME: dict[str, Any] = {role.value: number for role, number in _ROLE_NUMBERS.items()}
_DIRECTION_BY_NAME: dict[str, Any] = {
    "INBOUND": common_pb2.DIRECTION_INBOUND,
    "OUTBOUND": common_pb2.DIRECTION_OUTBOUND,
}
_SOURCE_BY_NAME: dict[str, Any] = {source.value: number for source, number in _SOURCE_NUMBERS.items()}


def contact_record_of(contact: threading_pb2.Contact, *, now: dt.datetime) -> ContactRecord:
    return ContactRecord(
        contact_id=contact.contact_id,
        location_id=contact.location_id,
        display_name=contact.display_name,
        emails=tuple(ContactEmail(e.email, e.primary) for e in contact.emails if e.email),
        assigned_user_id=contact.assigned_user_id,
        create_time=to_datetime(contact.create_time) or now,
        version=contact.version,
        created_by_sync=contact.created_by_sync,
    )


def contact_proto(record: ContactRecord) -> threading_pb2.Contact:
    return threading_pb2.Contact(
        contact_id=record.contact_id,
        location_id=record.location_id,
        display_name=record.display_name,
        emails=[threading_pb2.ContactEmail(email=e.email, primary=e.primary) for e in record.emails],
        assigned_user_id=record.assigned_user_id,
        create_time=to_timestamp(record.create_time),
        version=record.version,
        created_by_sync=record.created_by_sync,
    )


def conversation_proto(view: ConversationView) -> threading_pb2.Conversation:
    return threading_pb2.Conversation(
        conversation_id=view.conversation_id,
        location_id=view.location_id,
        contact_id=view.contact_id,
        last_message_time=to_timestamp(view.last_message_time),
        message_count=view.message_count,
        thread_count=view.thread_count,
        create_time=to_timestamp(view.create_time),
    )


def _participant_view_proto(view: ParticipantView) -> common_pb2.Participant:
    return common_pb2.Participant(
        email=view.email,
        display_name=view.display_name,
        role=_ROLE_BY_NAME.get(view.role, 0),
        position=view.position,
    )


def message_proto(view: MessageView) -> threading_pb2.Message:
    return threading_pb2.Message(
        message_id=view.message_id,
        location_id=view.location_id,
        conversation_id=view.conversation_id,
        thread_ids=list(view.thread_ids),
        rfc_message_id=view.rfc_message_id,
        direction=_DIRECTION_BY_NAME.get(view.direction, 0),
        source=_SOURCE_BY_NAME.get(view.source, 0),
        subject=view.subject,
        participants=[_participant_view_proto(p) for p in view.participants],
        text_body=view.text_body,
        html_body=view.html_body,
        attachments=[
            common_pb2.AttachmentDescriptor(
                attachment_id=a.attachment_id,
                filename=a.filename,
                content_type=a.content_type,
                size_bytes=a.size_bytes,
                content_id=a.content_id,
                inline=a.inline,
                sha256=a.sha256,
            )
            for a in view.attachments
        ],
        message_time=to_timestamp(view.message_time),
        mailbox_copies=[
            threading_pb2.MailboxCopy(
                mailbox_id=c.mailbox_id,
                gmail_message_id=c.gmail_message_id,
                gmail_thread_id=c.gmail_thread_id,
                gmail_state=common_pb2.GmailState(
                    label_ids=list(c.labels),
                    unread=c.unread,
                    trashed=c.trashed,
                    deleted=c.deleted,
                    update_time=to_timestamp(c.update_time),
                ),
            )
            for c in view.mailbox_copies
        ],
        rule_id=view.rule_id,
        send_id=view.send_id,
        send_pending=view.send_pending,
        superseded_message_ids=list(view.superseded_message_ids),
    )


def feed_entry_proto(entry: FeedEntry) -> threading_pb2.WatchMessagesResponse:
    return threading_pb2.WatchMessagesResponse(
        cursor=str(entry.seq),
        synced=events_pb2.MessageSynced(
            location_id=entry.location_id,
            message_id=entry.message_id,
            conversation_id=entry.conversation_id,
            thread_id=entry.thread_id,
            contact_id=entry.contact_id,
            rfc_message_id=entry.rfc_message_id,
            direction=_DIRECTION_BY_NAME.get(entry.direction, 0),
            source=_SOURCE_BY_NAME.get(entry.source, 0),
            rule_id=entry.rule_id,
            sync_time=to_timestamp(entry.sync_time),
            revised=entry.revised,
            supersedes_message_id=entry.supersedes_message_id,
        ),
    )


def explanation_proto(explanation: Explanation) -> threading_pb2.ExplainMessageResponse:
    return threading_pb2.ExplainMessageResponse(
        rfc_message_id=explanation.rfc_message_id,
        subject=explanation.subject,
        participants=[_participant_view_proto(p) for p in explanation.participants],
        decisions=[
            threading_pb2.LocationDecision(
                location_id=d.location_id,
                synced=d.synced,
                rule_id=d.rule_id,
                reason=d.reason,
                contact_id=d.contact_id,
                conversation_id=d.conversation_id,
                message_id=d.message_id,
                decide_time=to_timestamp(d.decide_time),
            )
            for d in explanation.decisions
        ],
    )


def refused_drop_proto(view: RefusedDropView) -> threading_pb2.RefusedDrop:
    return threading_pb2.RefusedDrop(
        drop_id=view.drop_id,
        rfc_message_id=view.rfc_message_id,
        participants=[_participant_view_proto(p) for p in view.participants],
        reason=view.reason,
        decide_time=to_timestamp(view.decide_time),
    )
