"""The content-addressed attachment store and the collector that fills it after placement (R18: only placed
messages have attachment rows, so only their content is ever fetched)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from services.threading.blobs import AttachmentCollector, BlobNotFound, ContentUnavailable, FolderBlobStore
from services.threading.store.attachments import AttachmentToFetch, stored_attachment
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


async def add_carol(db) -> None:
    """Carol, a contact of loc-a assigned to user-1: her mail is placed (R2)."""
    async with db.write() as session:
        record = ContactRecord(
            "c-1", "loc-a", "", (ContactEmail("carol@example.com", True),), "user-1", T0, 1, False
        )
        await upsert_contact(session, record, now=T0)


async def place_with_attachment(db, *, sender: str, rfc: str, sha: str) -> None:
    content = MessageContent(
        subject="s", attachments=(AttachmentInfo("1", "a.bin", size_bytes=1, sha256=sha),)
    )
    await MessageSync(db).apply_message(message(frm=sender, rfc=rfc, gmail_id=rfc, gmail_thread=rfc), content)


async def test_R18_only_placed_messages_are_fetched_and_a_wrong_digest_is_refused(
    threading_db, tmp_path: Path
) -> None:
    await add_carol(threading_db)
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


class GoneFetcher(Fetcher):
    """A source that answers it has no content (ingest's NOT_FOUND), or fails for a reason that may pass."""

    def __init__(self, error: Exception) -> None:
        super().__init__(b"")
        self.error = error

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        self.calls.append(attachment.message_id)
        raise self.error


async def _unavailable_reasons(db) -> list[tuple[int, str]]:
    async with db.read() as session:
        rows = (await session.execute(select(AttachmentRow))).scalars().all()
    return [(r.fetch_attempts, r.unavailable_reason) for r in rows]


async def test_issue16_an_attachment_its_source_has_no_content_for_is_final_after_one_answer(
    threading_db, tmp_path: Path
) -> None:
    await add_carol(threading_db)
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<gone@x>", sha="")
    fetcher = GoneFetcher(ContentUnavailable("ingest answered NOT_FOUND: no content for attachment 1"))
    collector = AttachmentCollector(
        threading_db, FolderBlobStore(tmp_path / "blobs"), fetcher, max_attempts=5
    )
    for _ in range(3):
        assert await collector.collect_once() == 0
    assert len(fetcher.calls) == 1
    ((attempts, reason),) = await _unavailable_reasons(threading_db)
    assert attempts == 1 and "has no content for it" in reason and "NOT_FOUND" in reason
    async with threading_db.read() as session:
        stored = await stored_attachment(session, "loc-a", fetcher.calls[0], "1")
    assert stored is not None and stored.unavailable_reason == reason


class SteppedClock:
    def __init__(self) -> None:
        self.time = T0

    def now(self) -> dt.datetime:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += dt.timedelta(seconds=seconds)


async def test_an_attachment_that_fails_every_attempt_becomes_final_with_the_reason(
    threading_db, tmp_path: Path
) -> None:
    await add_carol(threading_db)
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<flaky@x>", sha="")
    fetcher = GoneFetcher(ConnectionError("ingest unreachable"))
    clock = SteppedClock()
    collector = AttachmentCollector(
        threading_db, FolderBlobStore(tmp_path / "blobs"), fetcher, max_attempts=3, clock=clock
    )
    assert await collector.collect_once() == 0
    assert await _unavailable_reasons(threading_db) == [(1, "")]  # may still come
    for _ in range(4):
        clock.advance(3600)
        await collector.collect_once()
    ((attempts, reason),) = await _unavailable_reasons(threading_db)
    assert attempts == 3 and "every one of 3 attempts" in reason and "ConnectionError" in reason
    assert len(fetcher.calls) == 3


async def test_a_failed_attachment_waits_out_a_backoff_that_doubles_before_its_next_attempt(
    threading_db, tmp_path: Path
) -> None:
    # Every placed batch wakes the collector; without a backoff a source's "not yet" (ingest recording a message it
    # just published) used up every attempt within seconds and the attachment was given up for good.
    await add_carol(threading_db)
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<later@x>", sha="")
    fetcher = GoneFetcher(ConnectionError("ingest: not recorded as published yet"))
    clock = SteppedClock()
    collector = AttachmentCollector(
        threading_db,
        FolderBlobStore(tmp_path / "blobs"),
        fetcher,
        max_attempts=8,
        retry_delay=5.0,
        max_retry_delay=300.0,
        clock=clock,
    )
    tried_at: list[float] = []
    for second in range(0, 700):
        clock.time = T0 + dt.timedelta(seconds=second)
        before = len(fetcher.calls)
        await collector.collect_once()
        if len(fetcher.calls) > before:
            tried_at.append(second)
    assert tried_at == [0, 5, 15, 35, 75, 155, 315, 615]
    ((attempts, reason),) = await _unavailable_reasons(threading_db)
    assert attempts == 8 and "every one of 8 attempts" in reason

    # A source that answers on its retry is stored then, with nothing given up.
    await place_with_attachment(threading_db, sender="carol@example.com", rfc="<soon@x>", sha="")
    answers_second_time = SecondTimeFetcher(CONTENT)
    collector = AttachmentCollector(
        threading_db, FolderBlobStore(tmp_path / "blobs"), answers_second_time, clock=clock
    )
    assert await collector.collect_once() == 0
    assert await collector.collect_once() == 0  # still inside its first backoff
    clock.advance(5)
    assert await collector.collect_once() == 1
    assert len(answers_second_time.calls) == 2


class SecondTimeFetcher(Fetcher):
    """Answers "not yet" the first time it is asked, then serves the content."""

    def fetch(self, attachment: AttachmentToFetch) -> AsyncIterator[bytes]:
        self.calls.append(attachment.message_id)
        if len(self.calls) == 1:
            raise ConnectionError("not recorded as published yet")
        return chunks(self.data)
