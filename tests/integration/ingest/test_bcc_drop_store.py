"""Ingest's BCC tables on SQLite and PostgreSQL: addresses found by their token's digest until rotated, and drop
content kept only until its retention ends (R9, R18)."""

from __future__ import annotations

import datetime as dt

from services.ingest import store
from services.ingest.app import MIGRATIONS_DIR
from services.ingest.domain.bcc import token_digest
from services.ingest.drop_retention import DropRetention
from services.ingest.drops import BccAddresses
from services.runtime.clock import FrozenClock
from services.runtime.db import Database, migrate

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


async def test_R9_address_created_once_found_by_digest_and_rotated_away_at_once(database: Database) -> None:
    await migrate(database, MIGRATIONS_DIR)
    addresses = BccAddresses(database, "drop.crm.example", clock=FrozenClock(NOW))
    first = await addresses.get("loc-1")
    assert await addresses.get("loc-1") == first
    token = first.address.split("+", 1)[1].split("@", 1)[0]
    found = await addresses.location_for_token_digest(token_digest(token))
    assert found is not None and found.location_id == "loc-1"

    rotated = await addresses.rotate("loc-1")
    new_token = rotated.address.split("+", 1)[1].split("@", 1)[0]
    assert new_token != token
    assert await addresses.location_for_token_digest(token_digest(token)) is None
    assert (await addresses.location_for_token_digest(token_digest(new_token))) is not None
    # Rotating a location that never had an address creates one.
    assert (await addresses.rotate("loc-2")).address.endswith("@drop.crm.example")


async def test_R18_drop_content_is_served_until_its_retention_and_then_purged(database: Database) -> None:
    await migrate(database, MIGRATIONS_DIR)
    async with database.write() as session:
        await store.keep_drop_content(session, "d-old", b"old", expires_at=NOW - dt.timedelta(seconds=1))
        await store.keep_drop_content(session, "d-new", b"new", expires_at=NOW + dt.timedelta(hours=1))
    async with database.read() as session:
        assert await store.drop_content(session, "d-old", now=NOW) is None
        assert await store.drop_content(session, "d-new", now=NOW) == b"new"

    retention = DropRetention(
        database,
        placement_grace=dt.timedelta(minutes=10),
        retention=dt.timedelta(days=3),
        undecided=None,
        interval_seconds=60,
        clock=FrozenClock(NOW),
    )
    assert await retention.purge_once() == 1
    async with database.read() as session:
        # Past its expiry even a clock going backwards no longer finds it: the row is gone.
        assert await store.drop_content(session, "d-old", now=NOW - dt.timedelta(days=1)) is None
        assert await store.drop_content(session, "d-new", now=NOW) == b"new"
