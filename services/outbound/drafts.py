"""A send request turned into what is recorded and sent: its staged attachments (their total checked first, R14),
the MIME bytes with the product's send id header, and the first values of the send's row."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.outbound import store
from services.outbound.domain.email import (
    Attachment,
    EmailAddress,
    MessageLimits,
    OutgoingEmail,
    ReplyTarget,
    new_message_id,
)
from services.outbound.domain.errors import AttachmentsTooLarge, InvalidEmail
from services.outbound.domain.routing import SendKind
from services.outbound.mime import BccHandling, BuiltMessage, build_message
from services.runtime.db import Database
from services.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class SendRequest:
    request_id: str
    location_id: str
    user_id: str
    kind: SendKind
    to: tuple[EmailAddress, ...]
    subject: str
    cc: tuple[EmailAddress, ...] = ()
    bcc: tuple[EmailAddress, ...] = ()
    text_body: str = ""
    html_body: str = ""
    attachment_upload_ids: tuple[str, ...] = ()
    conversation_id: str = ""
    thread_id: str = ""
    reply_gmail_thread_id: str = ""
    reply_to_rfc_message_id: str = ""
    reply_references: tuple[str, ...] = ()


def require_ids(request: SendRequest) -> None:
    for name in ("request_id", "location_id", "user_id"):
        if not getattr(request, name):
            raise InvalidArgument(f"{name} is required", field=name)


async def staged_attachments(
    db: Database, request: SendRequest, limits: MessageLimits, now: dt.datetime
) -> list[store.StagedAttachment]:
    """The request's staged uploads; their total is checked before anything else happens (R14)."""
    ids = list(request.attachment_upload_ids)
    if not ids:
        return []
    if len(set(ids)) != len(ids):
        raise InvalidArgument(
            "an upload is named twice in attachment_upload_ids", field="attachment_upload_ids"
        )
    async with db.read() as session:
        sizes = await store.staged_sizes(session, request.location_id, ids, now=now)
        missing = [upload_id for upload_id in ids if upload_id not in sizes]
        if missing:
            raise InvalidEmail(
                "attachment_upload_ids", f"unknown or expired uploads {missing}: upload them again"
            )
        total = sum(sizes.values())
        if total > limits.max_attachment_bytes:
            raise AttachmentsTooLarge(
                "attachments", f"{total} bytes in total, the limit is {limits.max_attachment_bytes}"
            )
        return await store.load_staged(session, request.location_id, ids)


def build_email(
    request: SendRequest,
    sender: EmailAddress,
    staged: list[store.StagedAttachment],
    now: dt.datetime,
    *,
    bcc: BccHandling,
    message_id_domain: str,
    limits: MessageLimits,
    send_id: str,
) -> BuiltMessage:
    reply = None
    if request.reply_to_rfc_message_id:
        reply = ReplyTarget(message_id=request.reply_to_rfc_message_id, references=request.reply_references)
    email = OutgoingEmail(
        sender=sender,
        to=request.to,
        cc=request.cc,
        bcc=request.bcc,
        subject=request.subject,
        text_body=request.text_body,
        html_body=request.html_body,
        attachments=tuple(Attachment(a.filename, a.content_type, a.content) for a in staged),
        reply_to_message=reply,
        automatic=request.kind is SendKind.WORKFLOW,
    )
    return build_message(
        email,
        message_id=new_message_id(message_id_domain),
        date=now.replace(microsecond=0),
        limits=limits,
        bcc=bcc,
        send_id=send_id,
    )


def new_row(
    request: SendRequest,
    built: BuiltMessage,
    send_id: str,
    now: dt.datetime,
    *,
    owner: str,
    lease_until: dt.datetime,
) -> dict[str, object]:
    """The send row's values common to both channels (the caller adds its channel's)."""
    email = built.email
    recipients = dict.fromkeys(a.email for a in (*email.to, *email.cc, *email.bcc))
    return {
        "send_id": send_id,
        "location_id": request.location_id,
        "request_id": request.request_id,
        "kind": request.kind.value,
        "user_id": request.user_id,
        "connection_id": "",
        "mailbox_id": "",
        "mailbox_email": "",
        "ledger_key": "",
        "gmail_calls": 0,
        "reason": "",
        "error_reason": "",
        "rfc_message_id": built.message_id,
        "final_rfc_message_id": "",
        "gmail_message_id": "",
        "gmail_thread_id": "",
        "reply_gmail_thread_id": request.reply_gmail_thread_id,
        "subject": built.subject,
        "recipients": tuple(recipients),
        "message_date": now.replace(microsecond=0),
        "raw": built.raw,
        "pending_event": None,
        "created_at": now,
        "call_started_at": None,
        "lease_owner": owner,
        "lease_expires_at": lease_until,
    }
