"""Scoped user upserts on real SQLite and PostgreSQL: another location's memberships survive, a shared user
cannot be renamed by a scoped caller (nothing is written), and concurrent scoped upserts of one user from two
locations both keep their membership (the stored user is planned under a row lock)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from services.auth.domain import UserSharedWithOtherLocations
from services.auth.store import UserRecord, get_user, metadata, upsert_user
from services.runtime.db import Database

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
BOB = UserRecord("bob", "bob@crm.test", "Bob", ("loc-b",), 5)


@pytest.fixture
async def db(database: Database) -> Database:
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with database.write() as session:
        assert await upsert_user(session, BOB, now=NOW)
    return database


async def stored(db: Database) -> UserRecord | None:
    async with db.read() as session:
        return await get_user(session, "bob")


async def test_a_scoped_caller_adds_its_location_and_keeps_the_others(db: Database) -> None:
    joined = UserRecord("bob", "bob@crm.test", "Bob", ("loc-a",), 999)
    async with db.write() as session:
        assert await upsert_user(session, joined, now=NOW, scope=frozenset({"loc-a"}))
    assert await stored(db) == UserRecord("bob", "bob@crm.test", "Bob", ("loc-a", "loc-b"), 5)


async def test_a_scoped_caller_cannot_take_a_user_of_another_location_over(db: Database) -> None:
    takeover = UserRecord("bob", "attacker@crm.test", "Owned", ("loc-a",), 999)
    with pytest.raises(UserSharedWithOtherLocations):
        async with db.write() as session:
            await upsert_user(session, takeover, now=NOW, scope=frozenset({"loc-a"}))
    assert await stored(db) == BOB
    # Negative control: the same request from a caller for every location applies.
    async with db.write() as session:
        assert await upsert_user(session, takeover, now=NOW)
    assert await stored(db) == takeover


async def test_concurrent_scoped_upserts_from_two_locations_both_keep_their_membership(db: Database) -> None:
    async def join(location: str) -> None:
        async with db.write() as session:
            record = UserRecord("bob", "bob@crm.test", "Bob", (location,), 6)
            assert await upsert_user(session, record, now=NOW, scope=frozenset({location}))

    await asyncio.gather(*(join(f"loc-{n}") for n in range(6)))
    user = await stored(db)
    assert user is not None and user.location_ids == tuple(sorted({"loc-b", *(f"loc-{n}" for n in range(6))}))
