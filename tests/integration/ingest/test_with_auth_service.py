"""Ingest's sync worker with the real auth service (in-process, real gRPC) as its mailbox directory and token
source: connect through auth's OAuth flow, sync, lose the grant (R12), reconnect, and resume from the cursor on
auth's `reauthorized` event with nothing lost and nothing twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from mailsync.v1 import auth_pb2
from services.ingest import store
from services.ingest.app import MIGRATIONS_DIR
from services.ingest.auth_client import AuthServiceClient
from services.ingest.mailbox_cache import CachedMailboxes
from services.ingest.mailboxes import MailboxInfo
from services.ingest.sync import PassOutcome
from services.runtime.db import migrate, open_database
from services.runtime.gmail import GmailApi, GmailEndpoint
from services.runtime.grpc_client import ServiceToken, open_channel
from tests.fixtures.auth_service import AuthWorld
from tests.fixtures.ingest_world import IngestWorld, MessageRecorder, PublishCounter
from tests.fixtures.messaging import eventually

ALICE = "alice@example.com"


@pytest.fixture
async def ingest_on_auth(
    auth_world: AuthWorld, nats_client: Client, tmp_path: Path
) -> AsyncIterator[IngestWorld]:
    auth_world.sandbox.create_mailbox(ALICE)
    # Ingest has its own database (its own schema, never auth's).
    db = open_database(f"sqlite:///{tmp_path / 'ingest.db'}")
    await migrate(db, MIGRATIONS_DIR)
    channel = open_channel(
        f"127.0.0.1:{auth_world.service.port}", token=ServiceToken(auth_world.keys.internal, "ingest")
    )
    auth = AuthServiceClient(channel)
    api = GmailApi(GmailEndpoint(root_url=auth_world.sandbox.url, max_workers=4))
    recorder = MessageRecorder(nats_client)
    await recorder.start()
    world = IngestWorld(
        sandbox=auth_world.sandbox,
        db=db,
        nats=nats_client,
        api=api,
        directory=auth,  # type: ignore[arg-type]
        tokens=auth,  # type: ignore[arg-type]
        counter=PublishCounter(),
        recorder=recorder,
    )
    yield world
    await world.stop()
    await recorder.stop()
    await channel.close()
    await api.aclose()
    await db.dispose()


async def test_R12_with_real_auth_invalid_grant_pauses_and_reconnecting_resumes_with_no_gap(
    auth_world: AuthWorld, ingest_on_auth: IngestWorld
) -> None:
    world = ingest_on_auth
    auth: AuthServiceClient = world.directory  # type: ignore[assignment]
    await auth_world.add_user("u1")
    await auth_world.connect("u1", "loc-1", ALICE)
    mailbox = await auth.get_mailbox(email=ALICE)
    assert mailbox is not None and [c.state for c in mailbox.connections] == ["CONNECTED"]
    early = world.deliver(ALICE, copies=2)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    auth_world.sandbox.admin.change_password(ALICE, "changed")
    await auth_world.expire_access_tokens()
    auth.forget_token(mailbox.mailbox_id)
    during = world.deliver(ALICE, copies=3, subject="while the grant is dead")

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.PAUSED
    paused = await auth.get_mailbox(mailbox_id=mailbox.mailbox_id)
    assert paused is not None and paused.awaiting_reauth and not paused.connected
    async with world.db.read() as session:
        row = await store.get_sync_row(session, mailbox.mailbox_id)
    assert row is not None and row.state == "PAUSED_REAUTH"

    world.start_workers(syncer, count=1)
    world.start_connection_events()
    await auth_world.connect("u1", "loc-1", ALICE)

    async def all_published() -> bool:
        return set(world.recorder.recorded.normalized_ids()) >= set(early + during)

    await eventually(all_published, within=30)
    assert world.recorder.recorded.normalized_ids() == dict.fromkeys(early + during, 1)
    event = world.recorder.recorded.normalized[-1]
    assert [(c.location_id, c.user_id) for c in event.connections] == [("loc-1", "u1")]


class CountingDirectory:
    """Auth's client with a count of the GetMailbox calls that reached auth."""

    def __init__(self, auth: AuthServiceClient) -> None:
        self.auth = auth
        self.calls = 0

    async def get_mailbox(
        self, *, mailbox_id: str = "", email: str = "", fresh: bool = False
    ) -> MailboxInfo | None:
        self.calls += 1
        return await self.auth.get_mailbox(mailbox_id=mailbox_id, email=email)


async def test_mailbox_snapshots_are_asked_of_auth_once_and_dropped_by_the_mailboxs_connection_event(
    auth_world: AuthWorld, ingest_on_auth: IngestWorld, nats_client: Client
) -> None:
    auth: AuthServiceClient = ingest_on_auth.directory  # type: ignore[assignment]
    counting = CountingDirectory(auth)
    cache = CachedMailboxes(counting, auth, ttl=dt.timedelta(hours=1))
    # Negative control: the same cache without the event subscription keeps serving what it was told first.
    deaf = CachedMailboxes(counting, auth, ttl=dt.timedelta(hours=1))
    await cache.listen(nats_client)
    try:
        await auth_world.add_user("u1")
        await auth_world.connect("u1", "loc-1", ALICE)
        await auth_world.events.wait_for(1)
        answers: list[MailboxInfo | None] = []

        async def answered_from_memory() -> bool:
            # The `connected` event of the connect above may still be on its way to the cache and drop what it
            # holds: try until one lookup by address reached auth and the two repeats did not.
            before = counting.calls
            answers[:] = [
                await cache.get_mailbox(email=ALICE),
                await cache.get_mailbox(email=ALICE.upper()),
                None,
            ]
            assert answers[0] is not None
            answers[2] = await cache.get_mailbox(mailbox_id=answers[0].mailbox_id)
            return counting.calls - before == 1

        await eventually(answered_from_memory, within=30)
        first = answers[0]
        assert first is not None and [c.state for c in first.connections] == ["CONNECTED"]
        assert answers == [first, first, first]
        before = counting.calls
        assert await deaf.get_mailbox(mailbox_id=first.mailbox_id) == first
        assert await deaf.get_mailbox(mailbox_id=first.mailbox_id) == first
        assert counting.calls - before == 1

        await auth_world.crm.Disconnect(
            auth_pb2.DisconnectRequest(request_id="disconnect-1", location_id="loc-1", user_id="u1")
        )

        async def sees_the_disconnect() -> bool:
            mailbox = await cache.get_mailbox(mailbox_id=first.mailbox_id)
            return mailbox is not None and not mailbox.connected

        await eventually(sees_the_disconnect, within=30)
        stale = await deaf.get_mailbox(mailbox_id=first.mailbox_id)
        assert stale is not None and [c.state for c in stale.connections] == ["CONNECTED"]
        # A stop is decided on a fresh answer, which even the deaf cache asks auth for (and keeps).
        before = counting.calls
        confirmed = await deaf.get_mailbox(mailbox_id=first.mailbox_id, fresh=True)
        assert confirmed is not None and [c.state for c in confirmed.connections] == ["DISCONNECTED"]
        assert counting.calls - before == 1
        assert await deaf.get_mailbox(mailbox_id=first.mailbox_id) == confirmed
        mailbox_after = await cache.get_mailbox(mailbox_id=first.mailbox_id)
        assert mailbox_after is not None
        assert [c.state for c in mailbox_after.connections] == ["DISCONNECTED"]
    finally:
        await cache.close()


async def test_R12_a_token_gmail_refuses_pauses_the_mailbox_in_one_pass_without_waiting_for_its_expiry(
    auth_world: AuthWorld, ingest_on_auth: IngestWorld
) -> None:
    """The password changes and Google expires the mailbox's access tokens early: the sync's Gmail call is refused
    (401), ingest names the refused token to auth, auth refreshes, the grant is dead, and the same pass pauses
    the mailbox (PAUSED_REAUTH) with the connection REAUTH_REQUIRED. Nobody clears a cache by hand."""
    world = ingest_on_auth
    auth: AuthServiceClient = world.directory  # type: ignore[assignment]
    await auth_world.add_user("u1")
    await auth_world.connect("u1", "loc-1", ALICE)
    mailbox = await auth.get_mailbox(email=ALICE)
    assert mailbox is not None
    world.deliver(ALICE, copies=1)
    syncer = world.syncer()
    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.SYNCED

    auth_world.sandbox.admin.change_password(ALICE, "changed")
    assert auth_world.sandbox.admin.expire_access_tokens(ALICE) >= 1
    world.deliver(ALICE, copies=1, subject="after the password change")

    assert await syncer.sync(mailbox.mailbox_id) is PassOutcome.PAUSED
    paused = await auth.get_mailbox(mailbox_id=mailbox.mailbox_id)
    assert paused is not None and paused.awaiting_reauth and not paused.connected
