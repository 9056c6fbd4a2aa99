"""One worker per mailbox, across replicas: the fenced lease of ingest's store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event, update

from services.ingest.store import (
    LeaseLost,
    MailboxSyncRow,
    PublishedEntry,
    Readiness,
    StartedPass,
    acquire_lease,
    ensure_mailbox,
    get_sync_row,
    metadata,
    published_among,
    record_progress,
    release_lease,
    start_pass,
)
from services.runtime.db import Database, open_database

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(seconds=30)


@pytest.fixture
async def db(database: Database) -> Database:
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with database.write() as session:
        await ensure_mailbox(session, "mb1", "alice@example.com")
    return database


async def test_only_one_of_many_concurrent_workers_gets_the_lease(db: Database, database_target) -> None:
    # Separate engines stand for separate replicas.
    replicas = [open_database(database_target.url, schema=database_target.schema) for _ in range(4)]

    async def try_acquire(replica: Database, owner: str):
        async with replica.write() as session:
            return await acquire_lease(session, "mb1", owner, now=NOW, ttl=TTL)

    try:
        leases = await asyncio.gather(*(try_acquire(r, f"w{i}") for i, r in enumerate(replicas)))
    finally:
        for replica in replicas:
            await replica.dispose()
    assert sum(lease is not None for lease in leases) == 1


async def test_an_expired_lease_is_taken_over_with_a_higher_token(db: Database) -> None:
    async with db.write() as session:
        first = await acquire_lease(session, "mb1", "w1", now=NOW, ttl=TTL)
    async with db.write() as session:
        refused = await acquire_lease(session, "mb1", "w2", now=NOW + TTL / 2, ttl=TTL)
    async with db.write() as session:
        second = await acquire_lease(session, "mb1", "w2", now=NOW + TTL * 2, ttl=TTL)
    assert first is not None and refused is None and second is not None
    assert second.token > first.token


async def test_a_worker_that_overran_its_lease_cannot_move_the_cursor(db: Database) -> None:
    async with db.write() as session:
        stale = await acquire_lease(session, "mb1", "w1", now=NOW, ttl=TTL)
    async with db.write() as session:
        current = await acquire_lease(session, "mb1", "w2", now=NOW + TTL * 2, ttl=TTL)
    assert stale is not None and current is not None
    entry = PublishedEntry("g1", "<a@x>", 101, 1000)
    with pytest.raises(LeaseLost):
        async with db.write() as session:
            await record_progress(
                session,
                stale,
                published=[entry],
                history_cursor=500,
                skipped=0,
                latest_seen_history_id=500,
                now=NOW,
            )
    async with db.read() as session:
        row = await get_sync_row(session, "mb1")
        assert row is not None and row.history_cursor is None
        assert await published_among(session, "mb1", ["g1"]) == set()


async def test_progress_moves_the_cursor_and_records_published_ids_once(db: Database) -> None:
    async with db.write() as session:
        lease = await acquire_lease(session, "mb1", "w1", now=NOW, ttl=TTL)
    assert lease is not None
    entries = [PublishedEntry("g1", "<a@x>", 101, 1000), PublishedEntry("g2", "", 102, 2000)]
    for cursor in (102, 102):
        async with db.write() as session:
            await record_progress(
                session,
                lease,
                published=entries,
                history_cursor=cursor,
                skipped=1,
                latest_seen_history_id=105,
                now=NOW,
            )
    async with db.write() as session:
        await release_lease(session, lease)
    async with db.read() as session:
        row = await get_sync_row(session, "mb1")
        assert row is not None
        assert (row.history_cursor, row.last_synced_internal_ms, row.latest_seen_history_id) == (
            102,
            2000,
            105,
        )
        assert row.lease_owner is None
        assert row.messages_published == 2
        assert await published_among(session, "mb1", ["g1", "g2", "g3"]) == {"g1", "g2"}


async def test_a_window_replayed_in_part_counts_only_its_new_messages(db: Database) -> None:
    async with db.write() as session:
        lease = await acquire_lease(session, "mb1", "w1", now=NOW, ttl=TTL)
    assert lease is not None
    windows = [
        [PublishedEntry("g1", "<a@x>", 101, 1000), PublishedEntry("g2", "", 102, 2000)],
        # g2 again (a pass that published it, then failed before its cursor moved), with g3 new.
        [PublishedEntry("g2", "", 102, 2000), PublishedEntry("g3", "<c@x>", 103, 3000)],
    ]
    for window in windows:
        async with db.write() as session:
            await record_progress(
                session,
                lease,
                published=window,
                history_cursor=window[-1].history_id,
                skipped=0,
                latest_seen_history_id=0,
                now=NOW,
            )
    async with db.read() as session:
        row = await get_sync_row(session, "mb1")
        assert row is not None and row.messages_published == 3
        assert await published_among(session, "mb1", ["g1", "g2", "g3"]) == {"g1", "g2", "g3"}


async def test_the_ledger_insert_is_compiled_once_whatever_its_number_of_rows(db: Database) -> None:
    """Each pass inserts its own number of ledger entries: a statement compiled per row count (a multi-row VALUES
    of literal values) costs every pass a compilation. (SQLAlchemy compiles a one-row execution apart from a
    many-row one, so that one is a second compilation, also made once.)"""
    compiled_inserts: list[object] = []

    def seen(_conn: Any, _cursor: Any, sql: str, _parameters: Any, context: Any, _many: bool) -> None:
        if sql.lstrip().upper().startswith("INSERT INTO PUBLISHED_MESSAGES"):
            compiled_inserts.append(context.compiled)

    async with db.write() as session:
        lease = await acquire_lease(session, "mb1", "w1", now=NOW, ttl=TTL)
    assert lease is not None
    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        for count in (2, 5, 3):
            window = [PublishedEntry(f"g{count}-{i}", "", 100 + i, 1000 + i) for i in range(count)]
            async with db.write() as session:
                await record_progress(
                    session,
                    lease,
                    published=window,
                    history_cursor=100 + count,
                    skipped=0,
                    latest_seen_history_id=0,
                    now=NOW,
                )
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(compiled_inserts) == 3
    assert len({id(compiled) for compiled in compiled_inserts}) == 1
    async with db.read() as session:
        row = await get_sync_row(session, "mb1")
        assert row is not None and row.messages_published == 10


PUSH_INTERVAL = dt.timedelta(seconds=1)


async def _set_row(db: Database, **values: Any) -> None:
    async with db.write() as session:
        await session.execute(
            update(MailboxSyncRow).where(MailboxSyncRow.mailbox_id == "mb1").values(**values)
        )


async def _start(db: Database, readiness: Readiness, owner: str = "w1") -> StartedPass | None:
    async with db.write() as session:
        return await start_pass(
            session,
            "mb1",
            owner,
            now=NOW,
            ttl=TTL,
            state="SYNCING",
            safety_check_at=NOW + dt.timedelta(minutes=10),
            caused_by="",
            readiness=readiness,
            push_interval=PUSH_INTERVAL,
        )


async def test_a_scheduled_mailbox_is_leased_and_its_row_comes_back_from_the_same_statement(
    db: Database,
) -> None:
    await _set_row(db, history_cursor=41, state="IDLE", consecutive_failures=2, recent_message_chars=5000)
    started = await _start(db, Readiness.SCHEDULED)
    assert started is not None
    assert (started.row.history_cursor, started.row.consecutive_failures) == (41, 2)
    assert (started.row.state, started.row.lease_owner) == ("SYNCING", "w1")
    assert started.lease.token == started.row.fencing_token
    assert started.row.recent_message_chars == 5000, "the last pass finished: its size hint stands"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"history_cursor": 41, "state": "STOPPED"}, id="stopped (R10, R11)"),
        pytest.param({"history_cursor": 41, "state": "PAUSED_REAUTH"}, id="paused (R12)"),
        pytest.param(
            {"history_cursor": None, "state": "IDLE"}, id="never synced: auth gives the start first"
        ),
    ],
)
async def test_a_mailbox_that_needs_deciding_first_is_not_leased_nor_changed(
    db: Database, values: dict[str, Any]
) -> None:
    await _set_row(db, **values)
    async with db.read() as session:
        before = await get_sync_row(session, "mb1")
    assert await _start(db, Readiness.SCHEDULED) is None
    async with db.read() as session:
        after = await get_sync_row(session, "mb1")
    assert after == before
    assert await _start(db, Readiness.LEASE_FREE) is not None, "once decided, the lease is free to take"


@pytest.mark.parametrize(
    ("values", "push_starts"),
    [
        pytest.param({"last_sync_at": NOW - PUSH_INTERVAL / 2}, False, id="synced within the push interval"),
        pytest.param({"last_sync_at": NOW - PUSH_INTERVAL * 2}, True, id="synced before it"),
        pytest.param(
            {"state": "BACKING_OFF", "next_attempt_at": NOW + dt.timedelta(seconds=30)},
            False,
            id="backing off",
        ),
        pytest.param({"state": "FAILED", "next_attempt_at": NOW - TTL}, True, id="failed, its retry due"),
        pytest.param({"state": "BACKING_OFF", "next_attempt_at": None}, True, id="backing off, no retry set"),
    ],
)
async def test_a_push_starts_a_pass_only_when_the_mailbox_is_not_synced_too_recently_nor_backing_off(
    db: Database, values: dict[str, Any], push_starts: bool
) -> None:
    await _set_row(db, history_cursor=41, **values)
    started = await _start(db, Readiness.SCHEDULED_FOR_PUSH)
    assert (started is not None) is push_starts
    if started is None:
        assert await _start(db, Readiness.SCHEDULED) is not None, "a re-check or poll is not held back"


async def test_the_size_hint_is_cleared_after_a_holder_that_died_or_released_the_lease_unfinished(
    db: Database,
) -> None:
    await _set_row(db, history_cursor=41, recent_message_chars=5000)
    died = await _start(db, Readiness.SCHEDULED, owner="died")
    assert died is not None and died.row.recent_message_chars == 5000
    async with db.write() as session:
        after_death = await start_pass(
            session,
            "mb1",
            "w2",
            now=NOW + TTL * 2,
            ttl=TTL,
            state="SYNCING",
            safety_check_at=NOW,
            caused_by="",
            readiness=Readiness.SCHEDULED,
        )
    assert after_death is not None and after_death.row.recent_message_chars == 0, "the holder died mid-pass"

    await _set_row(db, recent_message_chars=5000, lease_owner=None, lease_expires_at=None)
    released = await _start(db, Readiness.SCHEDULED)
    assert released is not None
    async with db.write() as session:
        await release_lease(session, released.lease)
    again = await _start(db, Readiness.SCHEDULED, owner="w3")
    assert again is not None and again.row.recent_message_chars == 0, "released without finishing"
