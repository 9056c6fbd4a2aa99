"""The threading service's AttachmentFetcher over ingest's FetchAttachment RPC (internal caller): the content of
an attachment of a placed message, streamed from the Gmail message or the BCC drop it came in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mailsync.v1 import ingest_pb2, ingest_pb2_grpc
from services.threading.fetch_stream import content_chunks
from services.threading.store.attachments import AttachmentToFetch


class IngestAttachmentFetcher:
    """Streams from ingest; the caller owns and closes the channel (opened with an internal service token)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 300.0) -> None:
        self._stub = ingest_pb2_grpc.IngestServiceStub(channel)
        self._timeout = timeout_seconds

    async def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        """The content's chunks; raises when ingest refuses (the collector then retries a bounded number of times)."""
        request = ingest_pb2.FetchAttachmentRequest(
            mailbox_id="" if attachment.drop_id else attachment.mailbox_id,
            gmail_message_id="" if attachment.drop_id else attachment.gmail_message_id,
            drop_id=attachment.drop_id,
            attachment_id=attachment.attachment_id,
        )
        async for chunk in content_chunks(
            self._stub.FetchAttachment(request, timeout=self._timeout), "ingest"
        ):
            yield chunk
