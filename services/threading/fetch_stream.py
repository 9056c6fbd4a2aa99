"""The content of an attachment as a source streams it over gRPC (ingest's FetchAttachment, outbound's
FetchSentAttachment): metadata first, then chunks. A NOT_FOUND answer means the source has no content for it and
never will (ingest described a part without content, an upload expired): `ContentUnavailable`, so the collector
stops asking instead of retrying."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.threading.blobs import ContentUnavailable


async def content_chunks(responses: AsyncIterator[Any], source: str) -> AsyncIterator[bytes]:
    """The chunks of a metadata-then-chunks stream from `source` (named in errors)."""
    described = False
    try:
        async for response in responses:
            if response.HasField("metadata"):
                described = True
            elif not described:
                raise ValueError(f"{source} sent attachment content before its metadata")
            else:
                yield response.chunk
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise ContentUnavailable(f"{source} answered NOT_FOUND: {exc.details()}") from exc
        raise
