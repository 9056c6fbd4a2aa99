"""The OutboundService gRPC servicer: translates requests into the send use case and records into protos.

Location scope is checked by the runtime's interceptor for unary calls and here for the attachment stream, whose
location arrives in its first message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc

from mailsync.v1 import auth_pb2, common_pb2, outbound_pb2, outbound_pb2_grpc
from services.outbound import store
from services.outbound.connections import AuthConnections
from services.outbound.conversations import ThreadingConversations
from services.outbound.domain.email import EmailAddress
from services.outbound.domain.errors import AttachmentsTooLarge
from services.outbound.domain.quota import AccountType, LimitSource, QuotaStatus
from services.outbound.domain.routing import SendKind
from services.outbound.ledger import SendLedger
from services.outbound.sending import OutboundSender, SendRequest
from services.outbound.store import SendRecord
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.grpc_auth import current_caller
from services.runtime.grpc_server import ServicerRegistration
from services.runtime.protobuf_time import to_timestamp
from services.runtime.validation import required

_KINDS = {
    common_pb2.SEND_KIND_INDIVIDUAL: SendKind.INDIVIDUAL,
    common_pb2.SEND_KIND_BULK: SendKind.BULK,
    common_pb2.SEND_KIND_WORKFLOW: SendKind.WORKFLOW,
}
_KIND_PROTOS = {kind.value: proto for proto, kind in _KINDS.items()}
_STATES = {
    "SENDING": outbound_pb2.SEND_STATE_SENDING,
    "SENT": outbound_pb2.SEND_STATE_SENT,
    "FAILED": outbound_pb2.SEND_STATE_FAILED,
    "UNKNOWN": outbound_pb2.SEND_STATE_UNKNOWN,
}


_LIMIT_SOURCES = {
    LimitSource.SET_EXPLICITLY: outbound_pb2.DAILY_LIMIT_SOURCE_SET_EXPLICITLY,
    LimitSource.WORKSPACE_ACCOUNT: outbound_pb2.DAILY_LIMIT_SOURCE_WORKSPACE_ACCOUNT,
    LimitSource.CONSUMER_ACCOUNT: outbound_pb2.DAILY_LIMIT_SOURCE_CONSUMER_ACCOUNT,
    LimitSource.UNKNOWN_ACCOUNT: outbound_pb2.DAILY_LIMIT_SOURCE_UNKNOWN_ACCOUNT,
}
_ACCOUNT_TYPES = {
    AccountType.CONSUMER: auth_pb2.ACCOUNT_TYPE_CONSUMER,
    AccountType.WORKSPACE: auth_pb2.ACCOUNT_TYPE_WORKSPACE,
    AccountType.UNKNOWN: auth_pb2.ACCOUNT_TYPE_UNSPECIFIED,
}
# Only services (threading) call these.
INTERNAL_METHODS = frozenset({"FetchSentAttachment"})
# Above any Gmail account's real limit (Workspace: 2,000 a day), below what would make the ledger meaningless.
MAX_DAILY_LIMIT = 10_000
_CHUNK_BYTES = 1024 * 1024
_UPLOAD_PREFIX = "upload:"


def _require(value: str, field: str) -> str:
    return required(value, field)


def _addresses(values: list[common_pb2.EmailAddress]) -> tuple[EmailAddress, ...]:
    return tuple(EmailAddress(email=value.email, display_name=value.display_name) for value in values)


def send_request(request: outbound_pb2.SendEmailRequest) -> SendRequest:
    kind = _KINDS.get(request.kind)
    if kind is None:
        raise InvalidArgument("kind must be INDIVIDUAL, BULK or WORKFLOW", field="kind")
    return SendRequest(
        request_id=_require(request.request_id, "request_id"),
        location_id=_require(request.location_id, "location_id"),
        user_id=_require(request.user_id, "user_id"),
        kind=kind,
        to=_addresses(list(request.to)),
        cc=_addresses(list(request.cc)),
        bcc=_addresses(list(request.bcc)),
        subject=request.subject,
        text_body=request.text_body,
        html_body=request.html_body,
        attachment_upload_ids=tuple(request.attachment_upload_ids),
        conversation_id=request.conversation_id,
        thread_id=request.thread_id,
        reply_gmail_thread_id=request.reply_gmail_thread_id,
        reply_to_rfc_message_id=request.reply_to_rfc_message_id,
        reply_references=tuple(request.reply_references),
    )


def send_proto(record: SendRecord) -> outbound_pb2.Send:
    send = outbound_pb2.Send(
        send_id=record.send_id,
        request_id=record.request_id,
        location_id=record.location_id,
        kind=_KIND_PROTOS[record.kind],
        state=_STATES[record.state],
        mailbox_email=record.mailbox_email,
        rfc_message_id=record.final_rfc_message_id or record.rfc_message_id,
        gmail_message_id=record.gmail_message_id,
        gmail_thread_id=record.gmail_thread_id,
        create_time=to_timestamp(record.created_at),
        error=record.reason if record.state in ("FAILED", "UNKNOWN") else "",
    )
    if record.sent_at is not None:
        send.sent_time.CopyFrom(to_timestamp(record.sent_at))
    return send


class OutboundApi(outbound_pb2_grpc.OutboundServiceServicer):
    def __init__(
        self,
        db: Database,
        sender: OutboundSender,
        ledger: SendLedger,
        connections: AuthConnections,
        *,
        max_attachment_bytes: int,
        attachment_ttl: dt.timedelta,
        clock: Clock | None = None,
        conversations: ThreadingConversations | None = None,
    ) -> None:
        self._conversations = conversations
        self._db = db
        self._sender = sender
        self._ledger = ledger
        self._connections = connections
        self._max_attachment_bytes = max_attachment_bytes
        self._attachment_ttl = attachment_ttl
        self._clock = clock or SystemClock()

    async def UploadAttachment(
        self,
        request_iterator: AsyncIterator[outbound_pb2.UploadAttachmentRequest],
        context: grpc.aio.ServicerContext,
    ) -> outbound_pb2.UploadAttachmentResponse:
        metadata: outbound_pb2.UploadAttachmentRequest.Metadata | None = None
        content = bytearray()
        async for item in request_iterator:
            if item.HasField("metadata"):
                if metadata is not None:
                    raise InvalidArgument("metadata is sent once, in the first message", field="metadata")
                metadata = item.metadata
                current_caller().require_location(_require(metadata.location_id, "location_id"))
                continue
            if metadata is None:
                raise InvalidArgument("the first message carries the metadata", field="metadata")
            content += item.chunk
            # Refused while streaming: nothing larger than one message's whole allowance is ever held (R14).
            if len(content) > self._max_attachment_bytes:
                raise AttachmentsTooLarge(
                    "chunk", f"the attachment passes the {self._max_attachment_bytes}-byte limit"
                )
        if metadata is None:
            raise InvalidArgument("the upload carried no metadata", field="metadata")
        if not content:
            raise InvalidArgument(
                "chunk: the upload carried no content; send the attachment's bytes in chunk messages after "
                "the metadata",
                field="chunk",
            )
        request_id = _require(metadata.request_id, "request_id")
        now = self._clock.now()
        data = bytes(content)
        async with self._db.write() as session:
            upload_id, size, sha256 = await store.stage_attachment(
                session,
                upload_id=uuid.uuid4().hex,
                location_id=metadata.location_id,
                request_id=request_id,
                filename=metadata.filename or "attachment",
                content_type=metadata.content_type or "application/octet-stream",
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                now=now,
                expires_at=now + self._attachment_ttl,
            )
        return outbound_pb2.UploadAttachmentResponse(upload_id=upload_id, size_bytes=size, sha256=sha256)

    async def SendEmail(
        self, request: outbound_pb2.SendEmailRequest, context: grpc.aio.ServicerContext
    ) -> outbound_pb2.SendEmailResponse:
        wanted = send_request(request)
        if self._conversations is not None and (wanted.conversation_id or wanted.thread_id):
            # Another location's conversation is refused, not silently replaced by the To recipient's.
            await self._conversations.require_in_location(
                wanted.location_id, wanted.conversation_id, wanted.thread_id
            )
        record = await self._sender.send(wanted)
        return outbound_pb2.SendEmailResponse(send=send_proto(record))

    async def GetSend(
        self, request: outbound_pb2.GetSendRequest, context: grpc.aio.ServicerContext
    ) -> outbound_pb2.GetSendResponse:
        record = await self._sender.get(
            _require(request.location_id, "location_id"), _require(request.send_id, "send_id")
        )
        return outbound_pb2.GetSendResponse(send=send_proto(record))

    async def GetQuota(
        self, request: outbound_pb2.GetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> outbound_pb2.GetQuotaResponse:
        mailbox = await self._connections.mailbox_of(
            _require(request.location_id, "location_id"), _require(request.user_id, "user_id")
        )
        async with self._db.write() as session:
            # The account type as the connection says now, so the quota shown is the one the next send gets.
            await self._ledger.set_account_type(
                session, mailbox_id=mailbox.mailbox_id, account_type=mailbox.account_type
            )
            quota = await self._ledger.read_quota(session, mailbox_id=mailbox.mailbox_id)
        return quota_proto(mailbox.mailbox_email, quota)

    async def SetSendLimit(
        self, request: outbound_pb2.SetSendLimitRequest, context: grpc.aio.ServicerContext
    ) -> outbound_pb2.SetSendLimitResponse:
        if not 0 <= request.daily_limit <= MAX_DAILY_LIMIT:
            raise InvalidArgument(
                f"daily_limit must be between 1 and {MAX_DAILY_LIMIT} sends per 24 hours, or 0 to clear it",
                field="daily_limit",
            )
        mailbox = await self._connections.mailbox_of(
            _require(request.location_id, "location_id"), _require(request.user_id, "user_id")
        )
        async with self._db.write() as session:
            await self._ledger.set_account_type(
                session, mailbox_id=mailbox.mailbox_id, account_type=mailbox.account_type
            )
            await self._ledger.set_daily_limit(
                session, mailbox_id=mailbox.mailbox_id, daily_limit=request.daily_limit or None
            )
            quota = await self._ledger.read_quota(session, mailbox_id=mailbox.mailbox_id)
        return outbound_pb2.SetSendLimitResponse(quota=quota_proto(mailbox.mailbox_email, quota))

    async def FetchSentAttachment(
        self, request: outbound_pb2.FetchSentAttachmentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[outbound_pb2.FetchSentAttachmentResponse]:
        location_id = _require(request.location_id, "location_id")
        upload_id = _require(request.upload_id, "upload_id").removeprefix(_UPLOAD_PREFIX)
        async with self._db.read() as session:
            attachment = await store.sent_attachment(session, location_id, upload_id)
        if attachment is None:
            raise NotFound(
                f"no attachment {upload_id} of a send in location {location_id} (unknown, never sent, or kept "
                "no longer)",
                upload_id=upload_id,
            )
        yield outbound_pb2.FetchSentAttachmentResponse(
            metadata=outbound_pb2.FetchSentAttachmentResponse.Metadata(
                send_id=attachment.send_id,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size_bytes=attachment.size_bytes,
                sha256=attachment.sha256,
            )
        )
        for start in range(0, len(attachment.content), _CHUNK_BYTES):
            yield outbound_pb2.FetchSentAttachmentResponse(
                chunk=attachment.content[start : start + _CHUNK_BYTES]
            )


def quota_proto(mailbox_email: str, quota: QuotaStatus) -> outbound_pb2.GetQuotaResponse:
    answer = outbound_pb2.GetQuotaResponse(
        mailbox_email=mailbox_email,
        daily_limit=quota.daily_limit,
        used=quota.used,
        remaining=quota.remaining,
        limit_source=_LIMIT_SOURCES[quota.limit_source],
        account_type=_ACCOUNT_TYPES[quota.account_type],
    )
    if quota.reset_time is not None:
        answer.reset_time.CopyFrom(to_timestamp(quota.reset_time))
    if quota.blocked_until is not None:
        answer.blocked_until.CopyFrom(to_timestamp(quota.blocked_until))
    return answer


def outbound_registration(api: OutboundApi) -> ServicerRegistration:
    return ServicerRegistration(
        service=outbound_pb2.DESCRIPTOR.services_by_name["OutboundService"],
        servicer=api,
        add_to_server=outbound_pb2_grpc.add_OutboundServiceServicer_to_server,
        internal_methods=INTERNAL_METHODS,
    )
