"""The ingest gRPC servicer: proto in, a call on the push intake, the sync status or the work queue, proto out.

Scope: the tenant interceptor already refused a location outside the caller's token; here a mailbox must also be
connected in that location, or it does not exist for the caller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from nats.js import JetStreamContext

from mailsync.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.drops_api import DropRpcs
from services.ingest.errors import MailboxNotInLocation, PushMalformed, PushNotAuthenticated, QueueUnavailable
from services.ingest.mailboxes import MailboxDirectory, MailboxInfo
from services.ingest.push import PushRejected
from services.ingest.push_intake import PushIntake
from services.ingest.sync_status import read_sync_status
from services.ingest.work import queue_sync
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import FailedPrecondition
from services.runtime.grpc_server import ServicerRegistration
from services.runtime.protobuf_time import to_timestamp
from services.runtime.validation import required

log = logging.getLogger(__name__)

_TOKEN_REASONS = frozenset(
    {
        "missing_token",
        "malformed_token",
        "unknown_key",
        "invalid_token",
        "wrong_issuer",
        "wrong_service_account",
        "email_not_verified",
    }
)
_STATES = {
    "IDLE": ingest_pb2.MAILBOX_SYNC_STATE_IDLE,
    "SYNCING": ingest_pb2.MAILBOX_SYNC_STATE_SYNCING,
    "RESYNCING": ingest_pb2.MAILBOX_SYNC_STATE_RESYNCING,
    "BACKING_OFF": ingest_pb2.MAILBOX_SYNC_STATE_BACKING_OFF,
    "FAILED": ingest_pb2.MAILBOX_SYNC_STATE_FAILED,
    "PAUSED_REAUTH": ingest_pb2.MAILBOX_SYNC_STATE_PAUSED_REAUTH,
    "STOPPED": ingest_pb2.MAILBOX_SYNC_STATE_STOPPED,
}
# Only services (a push gateway, threading) call these.
INTERNAL_METHODS = frozenset({"HandlePush", "FetchAttachment", "SubmitBccDrop"})


class BccDropsNotConfigured(FailedPrecondition):
    reason = "BCC_DROPS_NOT_CONFIGURED"


class IngestApi(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        *,
        intake: PushIntake,
        directory: MailboxDirectory,
        db: Database,
        js: JetStreamContext,
        clock: Clock | None = None,
        drops: DropRpcs | None = None,
    ) -> None:
        self._drops = drops
        self._intake = intake
        self._directory = directory
        self._db = db
        self._js = js
        self._clock = clock or SystemClock()

    async def HandlePush(
        self, request: ingest_pb2.HandlePushRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.HandlePushResponse:
        try:
            outcome = await self._intake.accept(
                request.oidc_token or None, request.message.data, request.message.message_id
            )
        except PushRejected as rejected:
            if rejected.reason in _TOKEN_REASONS:
                raise PushNotAuthenticated(str(rejected), reason_code=rejected.reason) from None
            raise PushMalformed(str(rejected), reason_code=rejected.reason) from None
        except Exception as error:
            log.warning("push not queued", exc_info=True)
            raise QueueUnavailable("push not queued: the work queue did not take it; retry") from error
        return ingest_pb2.HandlePushResponse(mailbox_id=outcome.mailbox_id, queued=outcome.queued)

    async def GetSyncStatus(
        self, request: ingest_pb2.GetSyncStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetSyncStatusResponse:
        await self._mailbox_in_location(request.mailbox_id, request.location_id)
        view = await read_sync_status(self._db, request.mailbox_id, now=self._clock.now())
        if view is None:
            raise MailboxNotInLocation(
                f"mailbox {request.mailbox_id!r} has no sync state yet", mailbox_id=request.mailbox_id
            )
        status = ingest_pb2.SyncStatus(
            mailbox_id=view.mailbox_id,
            mailbox_email=view.mailbox_email,
            state=_STATES.get(view.state, ingest_pb2.MAILBOX_SYNC_STATE_UNSPECIFIED),
            history_cursor=view.history_cursor,
            lag_seconds=view.lag_seconds,
            last_error=view.last_error,
            messages_published=view.messages_published,
            messages_skipped=view.messages_skipped,
            resyncs=view.resyncs,
            last_audit_missing=view.last_audit_missing,
        )
        if view.last_sync_at is not None:
            status.last_sync_time.CopyFrom(to_timestamp(view.last_sync_at))
        if view.last_audit_at is not None:
            status.last_audit_time.CopyFrom(to_timestamp(view.last_audit_at))
        if view.next_attempt_at is not None:
            status.next_attempt_time.CopyFrom(to_timestamp(view.next_attempt_at))
        return ingest_pb2.GetSyncStatusResponse(status=status)

    async def ResyncMailbox(
        self, request: ingest_pb2.ResyncMailboxRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ResyncMailboxResponse:
        mailbox = await self._mailbox_in_location(request.mailbox_id, request.location_id)
        key = request.request_id or str(int(self._clock.now().timestamp() * 1000))
        try:
            await queue_sync(
                self._js,
                mailbox.mailbox_id,
                mailbox.email,
                reason="RESYNC",
                msg_id=f"resync:{mailbox.mailbox_id}:{key}",
                now=self._clock.now(),
            )
        except Exception as error:
            log.warning("resync not queued", exc_info=True)
            raise QueueUnavailable("resync not queued: the work queue did not take it; retry") from error
        return ingest_pb2.ResyncMailboxResponse(queued=True)

    async def SubmitBccDrop(
        self, request: ingest_pb2.SubmitBccDropRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitBccDropResponse:
        return await self._drop_rpcs().submit_bcc_drop(request)

    async def GetBccAddress(
        self, request: ingest_pb2.GetBccAddressRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetBccAddressResponse:
        return await self._drop_rpcs().get_bcc_address(request)

    async def RotateBccAddress(
        self, request: ingest_pb2.RotateBccAddressRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RotateBccAddressResponse:
        return await self._drop_rpcs().rotate_bcc_address(request)

    async def FetchAttachment(
        self, request: ingest_pb2.FetchAttachmentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.FetchAttachmentResponse]:
        async for response in self._drop_rpcs().fetch_attachment(request):
            yield response

    def _drop_rpcs(self) -> DropRpcs:
        if self._drops is None:
            raise BccDropsNotConfigured("BCC drops and attachments are not wired into this ingest process")
        return self._drops

    async def _mailbox_in_location(self, mailbox_id: str, location_id: str) -> MailboxInfo:
        required(location_id, "location_id", "name the location the mailbox is connected in")
        required(mailbox_id, "mailbox_id", "name the mailbox (its connection in auth gives the id)")
        mailbox = await self._directory.get_mailbox(mailbox_id=mailbox_id)
        if mailbox is None or not location_id or not mailbox.connected_in(location_id):
            raise MailboxNotInLocation(
                f"mailbox {mailbox_id!r} is not connected in location {location_id!r}",
                mailbox_id=mailbox_id,
                location_id=location_id,
            )
        return mailbox


def ingest_registration(api: IngestApi) -> ServicerRegistration:
    return ServicerRegistration(
        service=ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
        servicer=api,
        add_to_server=ingest_pb2_grpc.add_IngestServiceServicer_to_server,
        internal_methods=INTERNAL_METHODS,
    )
