"""The content of attachments of CRM sends for threading: outbound serves a send's staged upload (its attachment id
is "upload:<upload_id>") from the moment the send is recorded, over FetchSentAttachment (internal caller); every
other attachment comes from ingest. `RoutedAttachmentFetcher` picks the source by the attachment id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mailsync.v1 import outbound_pb2, outbound_pb2_grpc
from services.threading.blobs import AttachmentFetcher
from services.threading.fetch_stream import content_chunks
from services.threading.store.attachments import AttachmentToFetch

UPLOAD_PREFIX = "upload:"


class OutboundAttachmentFetcher:
    """Streams a send's upload from outbound; the caller owns and closes the channel (internal service token)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 300.0) -> None:
        self._stub = outbound_pb2_grpc.OutboundServiceStub(channel)
        self._timeout = timeout_seconds

    async def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        request = outbound_pb2.FetchSentAttachmentRequest(
            location_id=attachment.location_id,
            upload_id=attachment.attachment_id.removeprefix(UPLOAD_PREFIX),
        )
        responses = self._stub.FetchSentAttachment(request, timeout=self._timeout)
        async for chunk in content_chunks(responses, "outbound"):
            yield chunk


class RoutedAttachmentFetcher:
    """Attachments of CRM sends from outbound, all others (Gmail messages, BCC drops) from ingest."""

    def __init__(self, *, sends: AttachmentFetcher, mail: AttachmentFetcher) -> None:
        self._sends = sends
        self._mail = mail

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        # Only outbound names attachments "upload:..."; Gmail's and drops' ids never take that form.
        is_upload = attachment.attachment_id.startswith(UPLOAD_PREFIX)
        return (self._sends if is_upload else self._mail).fetch(attachment)
