"""The send lifecycle as events (PendingSend, SentMessage, SendFailed) and their outbox staging.

Every event's Nats-Msg-Id is derived from the send id, so however often a crashed process's work is redone, each
event of a send is published once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from mailsync.v1 import common_pb2, events_pb2
from services.outbound.domain.email import EmailAddress
from services.outbound.mime import BuiltMessage
from services.runtime import subjects
from services.runtime.outbox import stage
from services.runtime.protobuf_time import to_timestamp

# Bodies ride along in the pending event for threading; beyond this they are cut and marked truncated, which keeps
# the event far under JetStream's message size limit.
MAX_EVENT_BODY_CHARS = 256 * 1024


@dataclass(frozen=True)
class SendContext:
    """What the pending event says about the send beyond its message."""

    send_id: str
    request_id: str
    location_id: str
    user_id: str
    connection_id: str
    mailbox_id: str
    mailbox_email: str
    conversation_id: str
    thread_id: str
    gmail_thread_id: str
    create_time: dt.datetime


@dataclass(frozen=True)
class AttachmentFacts:
    upload_id: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str


def _participants(message: BuiltMessage) -> list[common_pb2.Participant]:
    email = message.email
    roles: list[tuple[int, tuple[EmailAddress, ...]]] = [
        (common_pb2.PARTICIPANT_ROLE_FROM, (email.sender,)),
        (common_pb2.PARTICIPANT_ROLE_TO, email.to),
        (common_pb2.PARTICIPANT_ROLE_CC, email.cc),
        (common_pb2.PARTICIPANT_ROLE_BCC, email.bcc),
    ]
    return [
        common_pb2.Participant(
            email=address.email, display_name=address.display_name, role=role, position=position
        )
        for role, addresses in roles
        for position, address in enumerate(addresses)
    ]


def pending_send(
    context: SendContext, message: BuiltMessage, attachments: list[AttachmentFacts]
) -> events_pb2.PendingSend:
    email = message.email
    truncated = len(email.text_body) > MAX_EVENT_BODY_CHARS or len(email.html_body) > MAX_EVENT_BODY_CHARS
    return events_pb2.PendingSend(
        send_id=context.send_id,
        request_id=context.request_id,
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        location_id=context.location_id,
        user_id=context.user_id,
        connection_id=context.connection_id,
        mailbox_id=context.mailbox_id,
        mailbox_email=context.mailbox_email,
        conversation_id=context.conversation_id,
        thread_id=context.thread_id,
        gmail_thread_id=context.gmail_thread_id,
        rfc_message_id=message.message_id,
        in_reply_to=[message.in_reply_to] if message.in_reply_to else [],
        references=list(message.references),
        subject=message.subject,
        participants=_participants(message),
        text_body=email.text_body[:MAX_EVENT_BODY_CHARS],
        html_body=email.html_body[:MAX_EVENT_BODY_CHARS],
        body_truncated=truncated,
        attachments=[
            common_pb2.AttachmentDescriptor(
                attachment_id=f"upload:{attachment.upload_id}",
                filename=attachment.filename,
                content_type=attachment.content_type,
                size_bytes=attachment.size_bytes,
                sha256=attachment.sha256,
            )
            for attachment in attachments
        ],
        create_time=to_timestamp(context.create_time),
    )


async def stage_pending(session: AsyncSession, event: events_pb2.PendingSend) -> None:
    await stage(session, subjects.send_pending(event.mailbox_id), event, f"send-pending-{event.send_id}")


async def stage_sent(
    session: AsyncSession,
    pending: bytes,
    *,
    gmail_message_id: str,
    gmail_thread_id: str,
    final_rfc_message_id: str,
    sent_time: dt.datetime,
) -> None:
    send = events_pb2.PendingSend()
    send.ParseFromString(pending)
    event = events_pb2.SentMessage(
        send=send,
        gmail_message_id=gmail_message_id,
        gmail_thread_id=gmail_thread_id,
        final_rfc_message_id=final_rfc_message_id,
        sent_time=to_timestamp(sent_time),
    )
    await stage(session, subjects.send_sent(send.mailbox_id), event, f"send-sent-{send.send_id}")


async def stage_failed(
    session: AsyncSession,
    *,
    send_id: str,
    mailbox_id: str,
    location_id: str,
    reason: str,
    fail_time: dt.datetime,
) -> None:
    event = events_pb2.SendFailed(
        send_id=send_id,
        mailbox_id=mailbox_id,
        location_id=location_id,
        reason=reason,
        fail_time=to_timestamp(fail_time),
    )
    await stage(session, subjects.send_failed(mailbox_id), event, f"send-failed-{send_id}")
