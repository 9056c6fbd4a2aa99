"""Attachment content: a content-addressed blob store and the collector that fetches the content of attachments
of placed messages through an injected port (ingest's FetchAttachment in production).

Two stores behind one interface, chosen by `blob_store`: a local folder (the embedded default) and an
S3-compatible bucket (`blob_store_s3.py`), which every replica of a cluster shares.

Only attachments of messages that synced somewhere have rows, so nothing of an unsynced email is ever fetched
(R18). Blobs are never deleted on disconnect: what synced stays (R11).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from services.runtime.backoff import doubling_delay
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.trace_links import links_to
from services.threading.store.attachments import (
    AttachmentToFetch,
    attachments_to_fetch,
    mark_fetch_failed,
    mark_fetched,
)

if TYPE_CHECKING:
    from services.threading.settings import ThreadingSettings

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024


class BlobNotFound(LookupError):
    """No blob with that digest."""


class ContentUnavailable(LookupError):
    """The source answered that it has no content for this attachment (it never will): no retry helps."""


def check_digest(digest: str) -> None:
    """BlobNotFound unless `digest` is a lower-case hex SHA-256 (so no name can reach outside the store)."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BlobNotFound(digest)


class BlobStore(Protocol):
    """Content-addressed storage of attachment content."""

    async def put(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stores the content; returns its hex SHA-256 and size (the same content is kept once)."""
        ...

    async def exists(self, digest: str) -> bool: ...

    def read(self, digest: str, chunk_bytes: int = ...) -> AsyncIterator[bytes]:
        """The content in chunks; BlobNotFound when there is none."""
        ...


def open_blob_store(settings: ThreadingSettings) -> BlobStore:
    """The store the settings choose (no connection is made until first use)."""
    if settings.blob_store == "s3":
        from services.threading.blob_store_s3 import S3BlobStore, s3_client

        client = s3_client(
            endpoint_url=settings.blob_s3_endpoint_url,
            region=settings.blob_s3_region,
            access_key_id=settings.blob_s3_access_key_id,
            secret_access_key=settings.blob_s3_secret_access_key,
            addressing_style=settings.blob_s3_addressing_style,
        )
        return S3BlobStore(client, settings.blob_s3_bucket, prefix=settings.blob_s3_prefix)
    return FolderBlobStore(settings.blob_folder)


class AttachmentFetcher(Protocol):
    """Where attachment content comes from (ingest streams it from Gmail or from the BCC drop)."""

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]: ...


class FolderBlobStore:
    """Blobs as files named by their SHA-256 under a folder (two levels of fan-out); writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self._root / digest[:2] / digest[2:4] / digest

    async def put(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stores the content; returns its hex SHA-256 and size. Storing the same content twice keeps one file."""
        self._root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        handle, temporary = tempfile.mkstemp(dir=self._root, prefix=".incoming-")
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
            target = self._path(digest.hexdigest())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return digest.hexdigest(), size

    async def exists(self, digest: str) -> bool:
        try:
            return self._path(digest).is_file()
        except BlobNotFound:
            return False

    async def read(self, digest: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        path = self._path(digest)
        if not path.is_file():
            raise BlobNotFound(digest)
        with path.open("rb") as source:
            while chunk := await asyncio.to_thread(source.read, chunk_bytes):
                yield chunk


class AttachmentCollector:
    """Fetches the content of attachments of placed messages into the blob store, retrying a bounded number of times
    with a backoff per attachment: `retry_delay` after the first failure, doubling up to `max_retry_delay`. The
    defaults (8 attempts, 5 s doubling to 5 min) keep trying for about ten minutes, which outlasts a redeploy of
    ingest or a short Gmail outage; a source's "not yet" (ingest recording the message it just published) passes
    on the first retry."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        fetcher: AttachmentFetcher,
        *,
        batch: int = 20,
        max_attempts: int = 8,
        poll_interval: float = 5.0,
        retry_delay: float = 5.0,
        max_retry_delay: float = 300.0,
        clock: Clock | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._blobs = blobs
        self._fetcher = fetcher
        self._batch = batch
        self._max_attempts = max_attempts
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                fetched = await self.collect_once()
            except Exception as exc:
                log.warning("attachment collection pass failed: %r", exc)
                fetched = 0
            if fetched >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)

    async def collect_once(self) -> int:
        """One pass over attachments still missing content; returns how many were stored."""
        async with self._db.read() as session:
            pending = await attachments_to_fetch(
                session, limit=self._batch, max_attempts=self._max_attempts, now=self._clock.now()
            )
        stored = 0
        for item in pending:
            try:
                digest, size = await self._fetch(item)
            except Exception as exc:
                give_up = _give_up_reason(exc, item, self._max_attempts)
                log.warning(
                    "fetching attachment %s of %s failed%s: %r",
                    item.attachment_id,
                    item.message_id,
                    "; it will never be available" if give_up else "",
                    exc,
                )
                delay = doubling_delay(self._retry_delay, self._max_retry_delay, item.attempts + 1)
                async with self._db.write() as session:
                    await mark_fetch_failed(
                        session,
                        item.message_id,
                        item.attachment_id,
                        retry_at=self._clock.now() + dt.timedelta(seconds=delay),
                        give_up_reason=give_up,
                    )
                continue
            async with self._db.write() as session:
                await mark_fetched(session, item.message_id, item.attachment_id, digest, size)
            stored += 1
        return stored

    async def _fetch(self, item: AttachmentToFetch) -> tuple[str, int]:
        # A trace of its own (the collector runs long after the message's trace ended), linked to the trace that
        # placed the message; the FetchAttachment call is its child.
        with self._tracer.start_as_current_span(
            "fetch attachment",
            links=links_to(item.caused_by),
            attributes={
                "mailsync.location_id": item.location_id,
                "mailsync.message_id": item.message_id,
                "mailsync.attachment_id": item.attachment_id,
                "mailsync.attempt": item.attempts + 1,
            },
        ):
            digest, size = await self._blobs.put(self._fetcher.fetch(item))
            if item.expected_sha256 and item.expected_sha256 != digest:
                raise ValueError(f"content digest {digest} differs from the announced {item.expected_sha256}")
            return digest, size


def _give_up_reason(exc: Exception, item: AttachmentToFetch, max_attempts: int) -> str:
    """Why the attachment will never be served after this failure, or "" when another attempt may succeed."""
    if isinstance(exc, ContentUnavailable):
        return f"its source has no content for it ({exc})"
    if item.attempts + 1 >= max_attempts:
        return f"every one of {max_attempts} attempts to fetch it failed, the last with {type(exc).__name__}"
    return ""
