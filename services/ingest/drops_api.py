"""The BCC-drop and attachment RPCs of IngestService (SubmitBccDrop, GetBccAddress, RotateBccAddress,
FetchAttachment): proto in, a call on the drop admission, the address book or the attachment source, proto out.

`IngestApi` delegates these four methods here. Location scope: the tenant interceptor already refused a location
outside the caller's token; an empty one is refused here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from mailsync.v1 import ingest_pb2
from services.ingest.attachments import AttachmentSource
from services.ingest.bcc_drop import BccDropAdmission
from services.ingest.domain.bcc import DropRefusalReason, DropRefused
from services.ingest.drops import BccAddresses
from services.runtime.errors import DependencyUnavailable, InvalidArgument, PermissionDenied
from services.runtime.protobuf_time import to_timestamp
from services.runtime.validation import required

log = logging.getLogger(__name__)


class BccDropRefused(PermissionDenied):
    """A drop failed an R9 check; subclasses per reason carry it as the ErrorInfo reason."""

    reason = "BCC_DROP_REFUSED"


# ErrorInfo.reason is a class attribute: one subclass per refusal reason, e.g. BCC_DROP_SENDER_NOT_A_USER.
_REFUSALS: dict[DropRefusalReason, type[BccDropRefused]] = {
    reason: type(f"BccDropRefused_{reason.name}", (BccDropRefused,), {"reason": f"BCC_DROP_{reason.name}"})
    for reason in DropRefusalReason
}


class DropNotRecorded(DependencyUnavailable):
    reason = "BCC_DROP_NOT_RECORDED"


class DropRpcs:
    def __init__(
        self, *, admission: BccDropAdmission, addresses: BccAddresses, attachments: AttachmentSource
    ) -> None:
        self._admission = admission
        self._addresses = addresses
        self._attachments = attachments

    async def submit_bcc_drop(
        self, request: ingest_pb2.SubmitBccDropRequest
    ) -> ingest_pb2.SubmitBccDropResponse:
        required(request.envelope_recipient, "envelope_recipient", "the RCPT TO address of the drop")
        if not request.raw_message:
            raise InvalidArgument("raw_message is required: the message as received", field="raw_message")
        try:
            drop = await self._admission.admit(
                request.envelope_recipient, request.raw_message, envelope_sender=request.envelope_sender
            )
        except DropRefused as refused:
            raise _REFUSALS[refused.reason](refused.explanation, refusal=refused.reason.value) from None
        except Exception as error:
            log.warning("bcc drop not recorded", exc_info=True)
            raise DropNotRecorded("the drop could not be recorded just now: retry later") from error
        return ingest_pb2.SubmitBccDropResponse(
            drop_id=drop.drop_id, location_id=drop.location_id, sender_user_id=drop.sender_user_id
        )

    async def get_bcc_address(
        self, request: ingest_pb2.GetBccAddressRequest
    ) -> ingest_pb2.GetBccAddressResponse:
        view = await self._addresses.get(required(request.location_id, "location_id", "name the location"))
        return ingest_pb2.GetBccAddressResponse(
            address=view.address, create_time=to_timestamp(view.created_at)
        )

    async def rotate_bcc_address(
        self, request: ingest_pb2.RotateBccAddressRequest
    ) -> ingest_pb2.RotateBccAddressResponse:
        view = await self._addresses.rotate(required(request.location_id, "location_id", "name the location"))
        return ingest_pb2.RotateBccAddressResponse(
            address=view.address, create_time=to_timestamp(view.created_at)
        )

    async def fetch_attachment(
        self, request: ingest_pb2.FetchAttachmentRequest
    ) -> AsyncIterator[ingest_pb2.FetchAttachmentResponse]:
        """Metadata first, then the content in chunks of at most 256 KiB."""
        required(request.attachment_id, "attachment_id", "the attachment's id from the message")
        if request.drop_id:
            found = await self._attachments.from_drop(request.drop_id, request.attachment_id)
        elif request.mailbox_id and request.gmail_message_id:
            found = await self._attachments.from_gmail(
                request.mailbox_id, request.gmail_message_id, request.attachment_id
            )
        else:
            raise InvalidArgument(
                "either drop_id or mailbox_id and gmail_message_id are required", field="drop_id"
            )
        yield ingest_pb2.FetchAttachmentResponse(
            metadata=ingest_pb2.FetchAttachmentResponse.Metadata(
                filename=found.filename,
                content_type=found.content_type,
                size_bytes=len(found.content),
                sha256=found.sha256,
            )
        )
        for chunk in found.chunks():
            yield ingest_pb2.FetchAttachmentResponse(chunk=chunk)
