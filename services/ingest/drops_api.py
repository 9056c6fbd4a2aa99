"""The BCC-drop and attachment RPCs of IngestService (SubmitBccDrop, GetBccAddress, RotateBccAddress,
FetchAttachment): proto in, a call on the drop admission, the address book or the attachment source, proto out.

`IngestApi` delegates these four methods here. Location scope: the tenant interceptor already refused a location
outside the caller's token; an empty one is refused here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mailsync.v1 import ingest_pb2
from services.ingest.attachments import AttachmentSource
from services.ingest.bcc_drop import BccDropAdmission
from services.ingest.domain.bcc import DropRefusalReason, DropRefused
from services.ingest.drops import BccAddresses
from services.runtime.errors import DependencyUnavailable, InvalidArgument, PermissionDenied
from services.runtime.protobuf_time import to_timestamp


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


def _location_required(location_id: str) -> str:
    if not location_id:
        raise InvalidArgument("location_id is required", field="location_id")
    return location_id


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
        if not request.envelope_recipient or not request.raw_message:
            raise InvalidArgument("envelope_recipient and raw_message are required")
        try:
            drop = await self._admission.admit(
                request.envelope_recipient, request.raw_message, envelope_sender=request.envelope_sender
            )
        except DropRefused as refused:
            raise _REFUSALS[refused.reason](refused.explanation, refusal=refused.reason.value) from None
        except Exception as error:
            raise DropNotRecorded(f"the drop could not be recorded: {type(error).__name__}") from error
        return ingest_pb2.SubmitBccDropResponse(
            drop_id=drop.drop_id, location_id=drop.location_id, sender_user_id=drop.sender_user_id
        )

    async def get_bcc_address(
        self, request: ingest_pb2.GetBccAddressRequest
    ) -> ingest_pb2.GetBccAddressResponse:
        view = await self._addresses.get(_location_required(request.location_id))
        return ingest_pb2.GetBccAddressResponse(
            address=view.address, create_time=to_timestamp(view.created_at)
        )

    async def rotate_bcc_address(
        self, request: ingest_pb2.RotateBccAddressRequest
    ) -> ingest_pb2.RotateBccAddressResponse:
        view = await self._addresses.rotate(_location_required(request.location_id))
        return ingest_pb2.RotateBccAddressResponse(
            address=view.address, create_time=to_timestamp(view.created_at)
        )

    async def fetch_attachment(
        self, request: ingest_pb2.FetchAttachmentRequest
    ) -> AsyncIterator[ingest_pb2.FetchAttachmentResponse]:
        """Metadata first, then the content in chunks of at most 256 KiB."""
        if not request.attachment_id:
            raise InvalidArgument("attachment_id is required", field="attachment_id")
        if request.drop_id:
            found = await self._attachments.from_drop(request.drop_id, request.attachment_id)
        elif request.mailbox_id and request.gmail_message_id:
            found = await self._attachments.from_gmail(
                request.mailbox_id, request.gmail_message_id, request.attachment_id
            )
        else:
            raise InvalidArgument("either drop_id or mailbox_id and gmail_message_id are required")
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
