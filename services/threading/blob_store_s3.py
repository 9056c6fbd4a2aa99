"""Attachment content in an S3-compatible bucket: the production blob store, shared by every threading replica.

Blobs are content-addressed (the key ends with the content's SHA-256), so storing the same content twice writes
one object and any replica can serve what another stored. Content is spooled (in memory up to a small size, then
on the pod's /tmp) while its digest is computed, then uploaded once; an object that already exists is not
uploaded again. boto3 is synchronous, so every call runs in a worker thread, never on the event loop.
Credentials follow boto3's chain (the pod's workload identity, AWS_* variables, or the explicit key settings).
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from botocore.exceptions import ClientError

from services.threading.blobs import CHUNK_BYTES, BlobNotFound, check_digest

SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    """Blobs as objects `<prefix><aa>/<bb>/<sha256>` in one bucket."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        spool_in_memory_bytes: int = SPOOL_IN_MEMORY_BYTES,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._spool_bytes = spool_in_memory_bytes

    def key(self, digest: str) -> str:
        check_digest(digest)
        return f"{self._prefix}{digest[:2]}/{digest[2:4]}/{digest}"

    async def put(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stores the content; returns its hex SHA-256 and size."""
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=self._spool_bytes) as spool:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(spool.write, chunk)
            hexdigest = digest.hexdigest()
            if not await self.exists(hexdigest):
                spool.seek(0)
                await asyncio.to_thread(
                    self._client.upload_fileobj,
                    spool,
                    self._bucket,
                    self.key(hexdigest),
                    ExtraArgs={"ContentType": "application/octet-stream"},
                )
        return hexdigest, size

    async def exists(self, digest: str) -> bool:
        try:
            key = self.key(digest)
        except BlobNotFound:
            return False
        try:
            await asyncio.to_thread(self._client.head_object, Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    async def read(self, digest: str, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        key = self.key(digest)
        try:
            answer = await asyncio.to_thread(self._client.get_object, Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                raise BlobNotFound(digest) from None
            raise
        body = answer["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_bytes):
                yield chunk
        finally:
            body.close()


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


def s3_client(
    *,
    endpoint_url: str = "",
    region: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    addressing_style: str = "auto",
    max_connections: int = 16,
) -> Any:
    """A boto3 S3 client; empty values fall back to boto3's own chain (workload identity, AWS_* variables)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max_connections,
        s3={"addressing_style": addressing_style},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )
