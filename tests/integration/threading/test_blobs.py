"""The content-addressed attachment store and the collector that fills it after placement (R18: only placed
messages have attachment rows, so only their content is ever fetched)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from services.threading.blobs import AttachmentCollector, BlobNotFound, FolderBlobStore
from services.threading.store.attachments import AttachmentToFetch
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from services.threading.store.models import AttachmentRow
from services.threading.store.values import AttachmentInfo, MessageContent
from services.threading.sync import MessageSync
from tests.fixtures.threading_messages import T0, message

CONTENT = b"attachment bytes " * 10_000


async def chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_same_content_is_stored_once_under_its_digest(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    first = await store.put(chunks(CONTENT))
    second = await store.put(chunks(CONTENT, 999))
    assert first == second == (hashlib.sha256(CONTENT).hexdigest(), len(CONTENT))
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 1
    assert b"".join([c async for c in store.read(first[0])]) == CONTENT


async def test_a_digest_that_is_not_one_reads_nothing(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobNotFound):
        [c async for c in store.read("../../etc/passwd")]


class Fetcher:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[str] = []

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        self.calls.append(attachment.message_id)
        return chunks(self.data)


async def place_with_attachment(db, *, sender: str, rfc: str, sha: str) -> None:
    content = MessageContent(
        subject="s", attachments=(AttachmentInfo("1", "a.bin", size_bytes=1, sha256=sha),)
    )
    await MessageSync(db).apply_message(message(frm=sender, rfc=rfc, gmail_id=rfc, gmail_thread=rfc), content)


async def test_R18_only_placed_messages_are_fetched_and_a_wrong_digest_is_refused(
    threading_db, tmp_path: Path
) -> None:
    async with threading_db.write() as session:
        record = ContactRecord(
            "c-1", "loc-a", "", (ContactEmail("carol@example.com", True),), "user-1", T0, 1, False
        )
        await upsert_contact(session, record, now=T0)
    good = hashlib.sha256(CONTENT).hexdigest()
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<ok@x>", sha=good)
    await place_with_attachment(threading_db, sender="stranger@example.com", rfc="<no@x>", sha=good)
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<bad@x>", sha="0" * 64)
    fetcher = Fetcher(CONTENT)
    collector = AttachmentCollector(
        threading_db, FolderBlobStore(tmp_path / "blobs"), fetcher, max_attempts=1
    )
    assert await collector.collect_once() == 1
    assert await collector.collect_once() == 0
    async with threading_db.read() as session:
        rows = (await session.execute(select(AttachmentRow))).scalars().all()
    assert sorted((r.blob_sha256 == good, r.fetch_attempts) for r in rows) == [(False, 1), (True, 0)]
    assert len(fetcher.calls) == 2
