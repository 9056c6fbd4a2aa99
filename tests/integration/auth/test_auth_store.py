"""The auth store on real SQLite and PostgreSQL: versioned users, one mailbox per address, sealed tokens bound to
their row, key rotation, the cross-replica refresh lease, one active connection per (user, location), states."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.auth.crypto import KeyRing, SecretToken, TokenCipher, TokenDecryptError, generate_key_text
from services.auth.domain import (
    Connection,
    ConnectionState,
    ConnectOutcome,
    accept_state,
    begin_connect,
    plan_connect,
    state_digest,
)
from services.auth.store import (
    MailboxRow,
    UserRecord,
    active_connection,
    connections_of_mailbox,
    consume_oauth_state,
    ensure_mailbox,
    find_oauth_state,
    get_user,
    list_users,
    load_access_token,
    load_refresh_token,
    mark_grant_failed,
    metadata,
    order_for_saving,
    release_refresh_lease,
    reseal_batch,
    rotate_token_keys,
    save_connections,
    save_oauth_state,
    store_grant,
    try_acquire_refresh_lease,
    upsert_user,
)
from services.runtime.db import Database, open_database

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
V1 = generate_key_text(1)
V2 = generate_key_text(2)
REFRESH = "1//0-refresh-token-{}"
ACCESS = "ya29.access-token-{}"


@pytest.fixture
async def db(database: Database) -> Database:
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return database


async def add_mailbox(db: Database, cipher: TokenCipher, name: str) -> str:
    async with db.write() as session:
        mailbox_id = await ensure_mailbox(
            session, f"{name}@example.com", new_mailbox_id=f"mb-{name}", now=NOW
        )
        await store_grant(
            session,
            cipher,
            mailbox_id,
            refresh_token=SecretToken(REFRESH.format(name)),
            access_token=SecretToken(ACCESS.format(name)),
            access_token_expires_at=NOW + dt.timedelta(hours=1),
            granted_scopes=["openid", "https://www.googleapis.com/auth/gmail.readonly"],
        )
    return mailbox_id


async def test_a_stale_user_upsert_never_wins(db: Database) -> None:
    async with db.write() as session:
        assert await upsert_user(session, UserRecord("u1", "a@crm.example", "A", ("L1", "L2"), 2), now=NOW)
    async with db.write() as session:
        assert not await upsert_user(session, UserRecord("u1", "old@crm.example", "Old", ("L9",), 1), now=NOW)
        assert not await upsert_user(
            session, UserRecord("u1", "same@crm.example", "Same", ("L9",), 2), now=NOW
        )
    async with db.write() as session:
        assert await upsert_user(session, UserRecord("u1", "b@crm.example", "B", ("L2", "L3"), 3), now=NOW)
    async with db.read() as session:
        user = await get_user(session, "u1")
    assert user == UserRecord("u1", "b@crm.example", "B", ("L2", "L3"), 3)


async def test_users_of_a_location_are_listed_by_crm_or_connected_address(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    async with db.write() as session:
        for n, locations in enumerate([("L1",), ("L1", "L2"), ("L2",), ("L1",)]):
            await upsert_user(session, UserRecord(f"u{n}", f"User{n}@CRM.example", "", locations, 1), now=NOW)
    gmail = await add_mailbox(db, cipher, "personal")
    async with db.write() as session:
        await save_connections(
            session,
            [Connection("c1", "u3", "L1", gmail, ConnectionState.CONNECTED, 1, NOW, NOW)],
        )
    async with db.read() as session:
        everyone = [u.user_id for u in await list_users(session, "L1")]
        first_page = [u.user_id for u in await list_users(session, "L1", limit=2)]
        next_page = [
            u.user_id for u in await list_users(session, "L1", limit=2, after_user_id=first_page[-1])
        ]
        by_crm = [u.user_id for u in await list_users(session, "L1", email="user1@crm.example")]
        by_gmail = [u.user_id for u in await list_users(session, "L1", email="Personal@Example.com")]
        elsewhere = [u.user_id for u in await list_users(session, "L2", email="personal@example.com")]
    assert everyone == ["u0", "u1", "u3"]
    assert first_page + next_page == everyone
    assert by_crm == ["u1"] and by_gmail == ["u3"] and elsewhere == []


async def test_one_mailbox_per_gmail_address(db: Database) -> None:
    async with db.write() as session:
        first = await ensure_mailbox(session, "Alice@Example.com", new_mailbox_id="mb1", now=NOW)
        second = await ensure_mailbox(session, " alice@example.com", new_mailbox_id="mb2", now=NOW)
        other = await ensure_mailbox(session, "bob@example.com", new_mailbox_id="mb3", now=NOW)
    assert first == second == "mb1"
    assert other == "mb3"


async def test_token_rows_hold_no_plaintext_and_round_trip(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    mailbox_id = await add_mailbox(db, cipher, "alice")
    async with db.read() as session:
        row = await session.get(MailboxRow, mailbox_id)
        assert row is not None and row.refresh_token_sealed and row.access_token_sealed
        stored = row.refresh_token_sealed + row.access_token_sealed
        assert b"1//" not in stored and b"ya29" not in stored
        assert await load_refresh_token(session, cipher, mailbox_id) == SecretToken(REFRESH.format("alice"))
        access = await load_access_token(session, cipher, mailbox_id)
    assert access is not None and access.token == SecretToken(ACCESS.format("alice"))
    assert access.expires_at == NOW + dt.timedelta(hours=1)


async def test_a_ciphertext_copied_to_another_mailbox_row_does_not_decrypt(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    alice = await add_mailbox(db, cipher, "alice")
    bob = await add_mailbox(db, cipher, "bob")
    async with db.write() as session:
        stolen = await session.scalar(
            select(MailboxRow.refresh_token_sealed).where(MailboxRow.mailbox_id == alice)
        )
        await session.execute(
            update(MailboxRow).where(MailboxRow.mailbox_id == bob).values(refresh_token_sealed=stolen)
        )
    async with db.read() as session:
        assert await load_refresh_token(session, cipher, alice) == SecretToken(REFRESH.format("alice"))
        with pytest.raises(TokenDecryptError):
            await load_refresh_token(session, cipher, bob)


async def test_key_rotation_reseals_every_row_in_batches_then_the_old_key_retires(db: Database) -> None:
    old = TokenCipher(KeyRing.parse(V1))
    names = [f"user{i}" for i in range(5)]
    mailboxes = [await add_mailbox(db, old, name) for name in names]
    rotating = TokenCipher(KeyRing.parse(f"{V2},{V1}"))
    rounds = []
    while True:
        async with db.write() as session:
            progress = await reseal_batch(session, rotating, limit=2)
        if not progress.examined:
            break
        rounds.append(progress.resealed)
    assert rounds == [2, 2, 1]
    assert await rotate_token_keys(db, rotating, batch_size=2) == 0
    retired = TokenCipher(KeyRing.parse(V2))
    async with db.read() as session:
        for name, mailbox_id in zip(names, mailboxes, strict=True):
            assert await load_refresh_token(session, retired, mailbox_id) == SecretToken(REFRESH.format(name))
            access = await load_access_token(session, retired, mailbox_id)
            assert access is not None and access.token == SecretToken(ACCESS.format(name))
        # Negative control: the old key alone no longer opens the rotated rows.
        with pytest.raises(TokenDecryptError):
            await load_refresh_token(session, old, mailboxes[0])


async def test_rotate_token_keys_does_every_row_and_is_idempotent(db: Database) -> None:
    old = TokenCipher(KeyRing.parse(V1))
    mailboxes = [await add_mailbox(db, old, f"user{i}") for i in range(3)]
    rotating = TokenCipher(KeyRing.parse(f"{V2},{V1}"))
    assert await rotate_token_keys(db, rotating, batch_size=2) == 3
    assert await rotate_token_keys(db, rotating, batch_size=2) == 0
    async with db.read() as session:
        versions = (
            await session.execute(
                select(MailboxRow.refresh_token_key_version, MailboxRow.access_token_key_version)
            )
        ).all()
        assert await load_refresh_token(session, TokenCipher(KeyRing.parse(V2)), mailboxes[2]) == SecretToken(
            REFRESH.format("user2")
        )
    assert set(versions) == {(2, 2)}


async def test_a_permanent_grant_failure_is_recorded_once_and_cleared_by_a_new_grant(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    mailbox_id = await add_mailbox(db, cipher, "alice")
    async with db.write() as session:
        assert await mark_grant_failed(session, mailbox_id, reason="invalid_grant", now=NOW)
        assert not await mark_grant_failed(session, mailbox_id, reason="invalid_grant", now=NOW)
        assert await load_access_token(session, cipher, mailbox_id) is None
    await add_mailbox(db, cipher, "alice")
    async with db.write() as session:
        assert await mark_grant_failed(session, mailbox_id, reason="invalid_grant", now=NOW)


async def test_only_one_replica_holds_the_refresh_lease(db: Database, database_target) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    mailbox_id = await add_mailbox(db, cipher, "alice")
    replicas = [open_database(database_target.url, schema=database_target.schema) for _ in range(4)]
    ttl = dt.timedelta(seconds=30)

    async def attempt(replica: Database, owner: str) -> bool:
        async with replica.write() as session:
            return await try_acquire_refresh_lease(session, mailbox_id, owner, now=NOW, ttl=ttl)

    try:
        won = await asyncio.gather(*(attempt(r, f"replica{i}") for i, r in enumerate(replicas)))
    finally:
        for replica in replicas:
            await replica.dispose()
    assert sum(won) == 1
    holder = f"replica{won.index(True)}"
    async with db.write() as session:
        assert not await try_acquire_refresh_lease(session, mailbox_id, "late", now=NOW + ttl / 2, ttl=ttl)
        assert await try_acquire_refresh_lease(session, mailbox_id, "late", now=NOW + ttl * 2, ttl=ttl)
        await release_refresh_lease(session, mailbox_id, holder)  # a stale holder cannot free the new lease
        assert not await try_acquire_refresh_lease(session, mailbox_id, "third", now=NOW + ttl * 2, ttl=ttl)
        await release_refresh_lease(session, mailbox_id, "late")
        assert await try_acquire_refresh_lease(session, mailbox_id, "third", now=NOW + ttl * 2, ttl=ttl)


def connection(
    cid: str, location: str, mailbox: str, state: ConnectionState = ConnectionState.CONNECTED
) -> Connection:
    return Connection(cid, "u1", location, mailbox, state, 100, NOW, NOW)


async def test_the_database_refuses_two_active_connections_for_one_user_and_location(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    m1 = await add_mailbox(db, cipher, "alice")
    m2 = await add_mailbox(db, cipher, "bob")
    async with db.write() as session:
        await save_connections(
            session, [connection("c1", "L1", m1), connection("c0", "L2", m1, ConnectionState.DISCONNECTED)]
        )
    with pytest.raises(IntegrityError):
        async with db.write() as session:
            await save_connections(session, [connection("c2", "L1", m2, ConnectionState.REAUTH_REQUIRED)])


async def test_R10_update_email_plan_saves_and_reads_back(db: Database) -> None:
    cipher = TokenCipher(KeyRing.parse(V1))
    old_mailbox = await add_mailbox(db, cipher, "alice")
    new_mailbox = await add_mailbox(db, cipher, "bob")
    async with db.write() as session:
        await save_connections(session, [connection("c1", "L1", old_mailbox)])
    later = NOW + dt.timedelta(days=1)
    async with db.write() as session:
        current = await active_connection(session, "u1", "L1")
        known = [current] if current else []
        known += await connections_of_mailbox(session, new_mailbox)
        plan = plan_connect(
            user_id="u1",
            location_id="L1",
            mailbox_id=new_mailbox,
            new_connection_id="c2",
            start_history_id=4242,
            now=later,
            known=known,
        )
        await save_connections(session, order_for_saving(change.connection for change in plan.changes))
    assert plan.outcome is ConnectOutcome.UPDATE_EMAIL and plan.release_mailbox_id == old_mailbox
    async with db.read() as session:
        active = await active_connection(session, "u1", "L1")
        old = await connections_of_mailbox(session, old_mailbox)
    assert active is not None and active.connection_id == "c2" and active.start_history_id == 4242
    assert active.start_time == later
    assert [(c.connection_id, c.state, c.replaced_by_connection_id, c.state_change_time) for c in old] == [
        ("c1", ConnectionState.REPLACED, "c2", later)
    ]


async def test_an_oauth_state_is_consumed_once_even_by_racing_callbacks(db: Database) -> None:
    flow = begin_connect(user_id="u1", location_id="L1", redirect_uri="https://crm.example/cb", now=NOW)
    async with db.write() as session:
        await save_oauth_state(session, flow.record)
    async with db.read() as session:
        found = await find_oauth_state(session, state_digest(flow.state))
    assert found == flow.record
    accepted = accept_state(found, flow.state, now=NOW + dt.timedelta(minutes=1))
    async with db.write() as session:
        assert await consume_oauth_state(session, accepted.digest, now=NOW)
    async with db.write() as session:
        assert not await consume_oauth_state(session, accepted.digest, now=NOW)
    async with db.read() as session:
        assert await find_oauth_state(session, state_digest("forged")) is None
