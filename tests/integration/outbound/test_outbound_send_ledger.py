"""The send ledger on real SQLite and PostgreSQL: rolling window, idempotency, Gmail blocks, quota view (R14)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import MetaData, func, select, update

from services.outbound.domain.errors import QuotaCause, QuotaExceeded
from services.outbound.ledger import SendLedger, add_send_ledger_tables, database_now, send_ledger_entries
from services.runtime.db import Database
from tests.integration.outbound.ledger_race import create_ledger_tables

MAILBOX = "mbx-1"


@pytest.fixture
async def ledger_database(database: Database) -> Database:
    await create_ledger_tables(database)
    return database


async def _admit(database: Database, ledger: SendLedger, key: str, mailbox_id: str = MAILBOX) -> None:
    async with database.write() as session:
        await ledger.admit(session, mailbox_id=mailbox_id, idempotency_key=key, recipients=2)


async def _age_entries(database: Database, keys: list[str], age: dt.timedelta) -> None:
    """Moves entries back in time (the database clock cannot be frozen)."""
    async with database.write() as session:
        now = await database_now(session)
        await session.execute(
            update(send_ledger_entries)
            .where(send_ledger_entries.c.idempotency_key.in_(keys))
            .values(sent_at=now - age)
        )


async def test_R14_sends_are_admitted_up_to_the_limit_then_refused_until_the_oldest_leaves(
    ledger_database: Database,
) -> None:
    ledger = SendLedger(default_daily_limit=3)
    for key in ("a", "b", "c"):
        await _admit(ledger_database, ledger, key)
    await _age_entries(ledger_database, ["a"], dt.timedelta(hours=5))
    await _age_entries(ledger_database, ["b"], dt.timedelta(hours=3))
    async with ledger_database.read() as session:
        oldest = await session.scalar(
            select(send_ledger_entries.c.sent_at).where(send_ledger_entries.c.idempotency_key == "a")
        )
    with pytest.raises(QuotaExceeded) as refused:
        await _admit(ledger_database, ledger, "d")
    assert refused.value.cause is QuotaCause.ROLLING_LIMIT
    assert refused.value.retry_time == oldest + dt.timedelta(hours=24)
    assert refused.value.code.name == "RESOURCE_EXHAUSTED"
    async with ledger_database.read() as session:
        assert await session.scalar(select(func.count()).select_from(send_ledger_entries)) == 3


async def test_R14_sends_older_than_24_hours_leave_the_window(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=2)
    await _admit(ledger_database, ledger, "old")
    await _admit(ledger_database, ledger, "recent")
    await _age_entries(ledger_database, ["old"], dt.timedelta(hours=24, seconds=1))
    await _admit(ledger_database, ledger, "new")
    async with ledger_database.read() as session:
        quota = await ledger.read_quota(session, mailbox_id=MAILBOX)
    assert (quota.daily_limit, quota.used, quota.remaining) == (2, 2, 0)


async def test_R14_refusal_names_when_enough_sends_have_left_after_a_limit_cut(
    ledger_database: Database,
) -> None:
    ledger = SendLedger(default_daily_limit=4)
    for key in ("k1", "k2", "k3", "k4"):
        await _admit(ledger_database, ledger, key)
    for hours, key in ((10, "k1"), (8, "k2"), (6, "k3"), (4, "k4")):
        await _age_entries(ledger_database, [key], dt.timedelta(hours=hours))
    async with ledger_database.write() as session:
        await ledger.set_daily_limit(session, mailbox_id=MAILBOX, daily_limit=2)
    async with ledger_database.read() as session:
        third_oldest = await session.scalar(
            select(send_ledger_entries.c.sent_at).where(send_ledger_entries.c.idempotency_key == "k3")
        )
    # 4 used, limit 2: three must leave before one more fits, the third of them leaves last.
    with pytest.raises(QuotaExceeded) as refused:
        await _admit(ledger_database, ledger, "k5")
    assert refused.value.retry_time == third_oldest + dt.timedelta(hours=24)
    assert refused.value.daily_limit == 2


async def test_the_same_idempotency_key_is_counted_once(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=5)
    async with ledger_database.write() as session:
        first = await ledger.admit(session, mailbox_id=MAILBOX, idempotency_key="req-1", recipients=1)
    async with ledger_database.write() as session:
        again = await ledger.admit(session, mailbox_id=MAILBOX, idempotency_key="req-1", recipients=1)
    assert not first.replayed and again.replayed
    assert again.admitted_at == first.admitted_at
    async with ledger_database.read() as session:
        assert (await ledger.read_quota(session, mailbox_id=MAILBOX)).used == 1


async def test_an_admission_rolls_back_with_the_callers_transaction(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=5)
    with pytest.raises(RuntimeError):
        async with ledger_database.write() as session:
            await ledger.admit(session, mailbox_id=MAILBOX, idempotency_key="req-1", recipients=1)
            raise RuntimeError("the caller's outbox write failed")
    async with ledger_database.read() as session:
        assert (await ledger.read_quota(session, mailbox_id=MAILBOX)).used == 0


async def test_a_released_send_gives_its_slot_back_but_keeps_its_key(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=1)
    await _admit(ledger_database, ledger, "refused-by-gmail")
    async with ledger_database.write() as session:
        assert await ledger.release(session, idempotency_key="refused-by-gmail")
        assert not await ledger.release(session, idempotency_key="refused-by-gmail")
    await _admit(ledger_database, ledger, "next")
    async with ledger_database.write() as session:
        replay = await ledger.admit(
            session, mailbox_id=MAILBOX, idempotency_key="refused-by-gmail", recipients=1
        )
    assert replay.replayed


async def test_R14_mailboxes_have_separate_windows_and_limits(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=1)
    async with ledger_database.write() as session:
        await ledger.set_daily_limit(session, mailbox_id="workspace", daily_limit=3)
    for key in ("w1", "w2", "w3"):
        await _admit(ledger_database, ledger, key, mailbox_id="workspace")
    await _admit(ledger_database, ledger, "c1", mailbox_id="consumer")
    with pytest.raises(QuotaExceeded):
        await _admit(ledger_database, ledger, "c2", mailbox_id="consumer")
    with pytest.raises(QuotaExceeded):
        await _admit(ledger_database, ledger, "w4", mailbox_id="workspace")


async def test_R14_gmails_sending_limit_closes_sending_until_its_time(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=500)
    await _admit(ledger_database, ledger, "before")
    async with ledger_database.write() as session:
        now = await database_now(session)
        blocked_until = now + dt.timedelta(hours=3)
        assert await ledger.record_gmail_block(session, mailbox_id=MAILBOX, blocked_until=blocked_until) == (
            blocked_until
        )
        # An earlier end named later (e.g. by a slower replica) never shortens the block.
        earlier = now + dt.timedelta(hours=1)
        assert (
            await ledger.record_gmail_block(session, mailbox_id=MAILBOX, blocked_until=earlier)
            == blocked_until
        )
    with pytest.raises(QuotaExceeded) as refused:
        await _admit(ledger_database, ledger, "during")
    assert refused.value.cause is QuotaCause.GMAIL_BLOCK
    assert refused.value.retry_time == blocked_until
    async with ledger_database.read() as session:
        quota = await ledger.read_quota(session, mailbox_id=MAILBOX)
    assert (quota.used, quota.remaining, quota.blocked_until, quota.reset_time) == (
        1,
        0,
        blocked_until,
        blocked_until,
    )


async def test_R14_a_gmail_block_that_has_ended_no_longer_refuses(ledger_database: Database) -> None:
    ledger = SendLedger()
    async with ledger_database.write() as session:
        now = await database_now(session)
        await ledger.record_gmail_block(
            session, mailbox_id=MAILBOX, blocked_until=now - dt.timedelta(seconds=1)
        )
    await _admit(ledger_database, ledger, "after")
    async with ledger_database.read() as session:
        quota = await ledger.read_quota(session, mailbox_id=MAILBOX)
    assert quota.blocked_until is None
    assert quota.used == 1


async def test_get_quota_of_an_idle_mailbox(ledger_database: Database) -> None:
    async with ledger_database.read() as session:
        quota = await SendLedger(default_daily_limit=2000).read_quota(session, mailbox_id="never-sent")
    assert (quota.daily_limit, quota.used, quota.remaining, quota.reset_time, quota.blocked_until) == (
        2000,
        0,
        2000,
        None,
        None,
    )


async def test_get_quota_reset_time_is_when_the_oldest_send_leaves(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=10)
    await _admit(ledger_database, ledger, "first")
    await _admit(ledger_database, ledger, "second")
    await _age_entries(ledger_database, ["first"], dt.timedelta(hours=2))
    async with ledger_database.read() as session:
        first_sent = await session.scalar(
            select(send_ledger_entries.c.sent_at).where(send_ledger_entries.c.idempotency_key == "first")
        )
        quota = await ledger.read_quota(session, mailbox_id=MAILBOX)
    assert quota.reset_time == first_sent + dt.timedelta(hours=24)
    assert (quota.used, quota.remaining) == (2, 8)
    assert quota.reset_time.tzinfo is not None


async def test_admission_time_is_the_database_clock(ledger_database: Database) -> None:
    ledger = SendLedger()
    async with ledger_database.write() as session:
        before = await database_now(session)
        admission = await ledger.admit(session, mailbox_id=MAILBOX, idempotency_key="k", recipients=1)
        after = await database_now(session)
    assert before <= admission.admitted_at <= after
    assert admission.admitted_at.tzinfo is not None


async def test_an_idempotency_key_of_another_mailbox_is_refused(ledger_database: Database) -> None:
    ledger = SendLedger()
    await _admit(ledger_database, ledger, "req-1", mailbox_id="first")
    with pytest.raises(ValueError, match="first"):
        await _admit(ledger_database, ledger, "req-1", mailbox_id="second")


async def test_the_ledger_tables_can_live_in_the_services_own_metadata(database: Database) -> None:
    service_metadata = MetaData()
    tables = add_send_ledger_tables(service_metadata)
    assert set(tables) == {"send_mailboxes", "send_ledger_entries"}
    async with database.engine.begin() as connection:
        await connection.run_sync(service_metadata.create_all)
    ledger = SendLedger(default_daily_limit=1)
    await _admit(database, ledger, "only")
    with pytest.raises(QuotaExceeded):
        await _admit(database, ledger, "one-too-many")


async def test_the_same_key_admitted_concurrently_is_counted_once(ledger_database: Database) -> None:
    ledger = SendLedger(default_daily_limit=500)

    async def admit() -> bool:
        async with ledger_database.write() as session:
            admission = await ledger.admit(session, mailbox_id=MAILBOX, idempotency_key="same", recipients=1)
        return admission.replayed

    replayed = await asyncio.gather(*(admit() for _ in range(12)))
    assert sorted(replayed) == [False] + [True] * 11
    async with ledger_database.read() as session:
        assert await session.scalar(select(func.count()).select_from(send_ledger_entries)) == 1
