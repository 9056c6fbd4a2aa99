"""Attachment content in shared object storage: the S3 blob store against a real S3-compatible server (moto's, on
loopback) keeps the folder store's contract, and two threading instances with separate data folders serve the
attachments each other collected (with the folder store they cannot: the negative control)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from mailsync.v1 import threading_pb2, threading_pb2_grpc
from services.runtime.grpc_client import StaticToken, open_channel
from services.runtime.service import RunningService, stop_service
from services.threading.app import build
from services.threading.blob_store_s3 import S3BlobStore
from services.threading.blobs import BlobNotFound, BlobStore, FolderBlobStore
from services.threading.settings import ThreadingSettings
from services.threading.store.attachments import AttachmentToFetch
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import AttachmentRow
from services.threading.store.values import AttachmentInfo, MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.messaging import eventually
from tests.fixtures.s3_server import S3Bucket
from tests.fixtures.services import service_settings
from tests.fixtures.threading_messages import T0, message

# Larger than the in-memory spool, so the upload streams from a temporary file.
BIG = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: BlobStore, digest: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest)])


@pytest.fixture(params=["folder", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "folder":
        return FolderBlobStore(tmp_path / "blobs")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return S3BlobStore(bucket.client(), bucket.bucket, prefix="attachments/")


async def test_both_stores_keep_content_once_under_its_digest_and_read_it_back_whole(
    blob_store: BlobStore,
) -> None:
    expected = (hashlib.sha256(BIG).hexdigest(), len(BIG))
    assert await blob_store.put(chunks(BIG)) == expected
    assert await blob_store.put(chunks(BIG, 1000)) == expected
    assert await blob_store.exists(expected[0])
    assert await read_all(blob_store, expected[0]) == BIG
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not await blob_store.exists(missing)
    with pytest.raises(BlobNotFound):
        await read_all(blob_store, missing)
    for hostile in ("../../etc/passwd", "A" * 64, ""):
        assert not await blob_store.exists(hostile)
        with pytest.raises(BlobNotFound):
            await read_all(blob_store, hostile)


async def test_the_bucket_holds_one_object_per_content(s3_bucket: S3Bucket) -> None:
    client = s3_bucket.client()
    store = S3BlobStore(client, s3_bucket.bucket, prefix="attachments/")
    digest, _ = await store.put(chunks(b"first"))
    await store.put(chunks(b"first"))
    await store.put(chunks(b"second"))
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.bucket)["Contents"])
    assert len(keys) == 2
    assert f"attachments/{digest[:2]}/{digest[2:4]}/{digest}" in keys


class ContentFetcher:
    """Threading's attachment port, as ingest's FetchAttachment would answer it: the content of every attachment
    this test placed, keyed by the placed message's RFC Message-ID, recording what this instance fetched."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents
        self.fetched: list[str] = []

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        self.fetched.append(attachment.message_id)
        return chunks(self.contents[attachment.attachment_id])


CONTENTS = {"att-a": b"collected by instance A " * 5000, "att-b": b"collected by instance B " * 7000}


async def place(db: Any, rfc: str, attachment_id: str) -> str:
    """Places a message from a known contact with one attachment; returns threading's message id."""
    digest = hashlib.sha256(CONTENTS[attachment_id]).hexdigest()
    content = MessageContent(
        subject="with attachment",
        attachments=(AttachmentInfo(attachment_id, f"{attachment_id}.bin", size_bytes=1, sha256=digest),),
    )
    await MessageSync(db).apply_message(
        message(frm="carol@example.com", rfc=rfc, gmail_id=rfc, gmail_thread=rfc), content
    )
    async with db.read() as session:
        row = await session.scalar(select(AttachmentRow).where(AttachmentRow.attachment_id == attachment_id))
    assert row is not None
    return row.message_id


async def fetched(db: Any, attachment_id: str) -> bool:
    async with db.read() as session:
        row = await session.scalar(select(AttachmentRow).where(AttachmentRow.attachment_id == attachment_id))
    return row is not None and bool(row.blob_sha256)


async def download(running: RunningService, token: str, message_id: str, attachment_id: str) -> bytes:
    async with open_channel(f"127.0.0.1:{running.port}", token=StaticToken(token)) as channel:
        stub = threading_pb2_grpc.ThreadingServiceStub(channel)
        request = threading_pb2.GetAttachmentRequest(
            location_id="loc-a", message_id=message_id, attachment_id=attachment_id
        )
        return b"".join([answer.chunk async for answer in stub.GetAttachment(request, timeout=30)])


@pytest.mark.parametrize("backend", ["s3", "folder"])
async def test_two_threading_instances_serve_the_attachments_each_other_collected(
    backend: str,
    request: pytest.FixtureRequest,
    nats_server: Any,
    database_target: Any,
    token_keys_value: str,
    token_keys: Any,
    run_service_in_process: Any,
    tmp_path: Path,
) -> None:
    blob_settings = request.getfixturevalue("s3_bucket").settings() if backend == "s3" else {}

    def instance_settings(name: str) -> ThreadingSettings:
        # Each instance has its own data folder, as each pod has its own filesystem.
        return service_settings(
            ThreadingSettings,
            nats_url=nats_server.url,
            database=database_target,
            token_keys_value=token_keys_value,
            data_dir=tmp_path / name,
            **blob_settings,
        )

    async def start(name: str, fetcher: ContentFetcher) -> RunningService:
        return await run_service_in_process(
            instance_settings(name), functools.partial(build, attachment_fetcher=fetcher)
        )

    # A alone collects att-a; then B alone collects att-b; then A comes back and both are asked for the other's.
    fetcher_a, fetcher_b = ContentFetcher(CONTENTS), ContentFetcher(CONTENTS)
    first_a = await start("a", fetcher_a)
    db = first_a.components.database
    async with db.write() as session:
        contact = ContactRecord(
            "c-1", "loc-a", "", (ContactEmail("carol@example.com", True),), "user-1", T0, 1, False
        )
        await upsert_contact(session, contact, now=T0)
    message_a = await place(db, "<with-a@x>", "att-a")

    async def a_collected_att_a() -> bool:
        return await fetched(db, "att-a")

    await eventually(a_collected_att_a, within=120)
    await stop_service(first_a)

    instance_b = await start("b", fetcher_b)
    message_b = await place(instance_b.components.database, "<with-b@x>", "att-b")

    async def b_collected_att_b() -> bool:
        return await fetched(instance_b.components.database, "att-b")

    await eventually(b_collected_att_b, within=120)
    instance_a = await start("a", ContentFetcher({}))
    assert (fetcher_a.fetched, fetcher_b.fetched) == ([message_a], [message_b])

    token = token_keys.mint("crm", ["loc-a"])
    if backend == "s3":
        assert await download(instance_b, token, message_a, "att-a") == CONTENTS["att-a"]
        assert await download(instance_a, token, message_b, "att-b") == CONTENTS["att-b"]
    else:
        # Negative control: a folder is local to its instance, so the other one cannot serve the content.
        for running, message_id, attachment_id in (
            (instance_b, message_a, "att-a"),
            (instance_a, message_b, "att-b"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await download(running, token, message_id, attachment_id)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
