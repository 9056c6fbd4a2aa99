"""How threading reads an attachment stream from ingest or outbound: NOT_FOUND is final, other failures are not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mailsync.v1 import ingest_pb2
from services.threading.blobs import ContentUnavailable
from services.threading.fetch_stream import content_chunks


def _failure(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no such part")


async def _stream(*items: Any, then: Exception | None = None) -> AsyncIterator[Any]:
    for item in items:
        yield item
    if then is not None:
        raise then


async def _read(responses: AsyncIterator[Any]) -> bytes:
    return b"".join([chunk async for chunk in content_chunks(responses, "ingest")])


def test_chunks_follow_the_metadata() -> None:
    responses = _stream(
        ingest_pb2.FetchAttachmentResponse(
            metadata=ingest_pb2.FetchAttachmentResponse.Metadata(filename="a")
        ),
        ingest_pb2.FetchAttachmentResponse(chunk=b"ab"),
        ingest_pb2.FetchAttachmentResponse(chunk=b"c"),
    )
    assert asyncio.run(_read(responses)) == b"abc"


def test_issue16_not_found_means_the_content_will_never_come() -> None:
    with pytest.raises(ContentUnavailable, match="ingest answered NOT_FOUND: no such part"):
        asyncio.run(_read(_stream(then=_failure(grpc.StatusCode.NOT_FOUND))))


def test_other_failures_stay_retryable() -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(_read(_stream(then=_failure(grpc.StatusCode.UNAVAILABLE))))


def test_content_before_metadata_is_refused() -> None:
    with pytest.raises(ValueError, match="before its metadata"):
        asyncio.run(_read(_stream(ingest_pb2.FetchAttachmentResponse(chunk=b"x"))))
