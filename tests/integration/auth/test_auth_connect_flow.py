"""Connect, update email and disconnect against the Gmail sandbox and a real database (R1, R10, R11, R12): the
authorization URL is approved through the sandbox's consent (scripted), the callback completes the connection."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from services.auth.access_tokens import AccessTokens
from services.auth.connections import ConnectionFlows
from services.auth.crypto import KeyRing, TokenCipher, generate_key_text
from services.auth.domain import (
    GMAIL_READONLY,
    ConnectionChange,
    ConnectionEventKind,
    ConnectionState,
    ConnectOutcome,
    ConsentDenied,
    MissingScopes,
    ReconnectRequired,
    StateRejected,
)
from services.auth.store import (
    ConnectionRow,
    MailboxRow,
    active_connection,
    connections_of_mailbox,
    find_mailbox_by_email,
    load_refresh_token,
    metadata,
)
from services.auth.watches import WatchRenewal, WatchRenewalOutcome
from services.runtime.clock import FrozenClock
from services.runtime.db import Database
from services.runtime.gmail import (
    GmailApi,
    GmailEndpoint,
    OAuthClient,
    PermanentAuthFailure,
    refresh_access_token,
)
from tests.fixtures.sandbox import GmailSandbox, PushReceiver

ALICE = "alice@example.com"
BOB = "bob@example.com"
REDIRECT = "http://127.0.0.1:9/oauth/callback"
CLIENT_ID = "crm-test.apps.googleusercontent.com"
SECRET = "crm-test-secret"
TOPIC = "projects/sandbox-project/topics/gmail"


@dataclass
class Harness:
    flows: ConnectionFlows
    tokens: AccessTokens
    db: Database
    sandbox: GmailSandbox
    clock: FrozenClock
    cipher: TokenCipher
    oauth: OAuthClient
    api: GmailApi
    events: list[tuple[ConnectionEventKind, str]] = field(default_factory=list)

    async def connect(self, user: str, location: str, address: str, scopes: list[str] | None = None):
        started = await self.flows.begin(user_id=user, location_id=location)
        query = self.consent(started.authorization_url, address, scopes)
        return await self.flows.complete(
            state=query["state"], code=query.get("code", ""), error=query.get("error", "")
        )

    def consent(
        self, url: str, address: str, scopes: list[str] | None = None, decision: str = "allow"
    ) -> dict[str, str]:
        redirected = self.sandbox.admin.approve(url, address, scopes=scopes, decision=decision)
        return {key: values[0] for key, values in parse_qs(urlsplit(redirected).query).items()}

    def watched(self) -> set[str]:
        return set(self.sandbox.admin.push_report()["watches"])

    async def refresh_token_of(self, address: str) -> str:
        async with self.db.read() as session:
            mailbox = await find_mailbox_by_email(session, address)
            assert mailbox is not None
            token = await load_refresh_token(session, self.cipher, mailbox.mailbox_id)
        assert token is not None
        return token.reveal()

    async def grant_is_alive(self, refresh_token: str) -> bool:
        try:
            await refresh_access_token(self.api, self.oauth, refresh_token, now=self.clock.now())
        except PermanentAuthFailure:
            return False
        return True


@pytest.fixture
def api(gmail_sandbox: GmailSandbox) -> Iterator[GmailApi]:
    gmail_api = GmailApi(GmailEndpoint(root_url=gmail_sandbox.url, max_workers=4))
    yield gmail_api
    gmail_api.close()


@pytest.fixture
async def harness(
    database: Database, gmail_sandbox: GmailSandbox, push_receiver: PushReceiver, api: GmailApi
) -> AsyncIterator[Harness]:
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    for address in (ALICE, BOB):
        gmail_sandbox.create_mailbox(address)
    gmail_sandbox.admin.register_client(CLIENT_ID, SECRET, [REDIRECT])
    gmail_sandbox.admin.set_topic(TOPIC, push_endpoint=push_receiver.url)
    clock = FrozenClock(dt.datetime.now(dt.UTC))
    cipher = TokenCipher(KeyRing.parse(generate_key_text(1)))
    oauth = OAuthClient(
        CLIENT_ID, SECRET, token_uri=gmail_sandbox.url + "/token", revoke_uri=gmail_sandbox.url + "/revoke"
    )
    tokens = AccessTokens(db=database, cipher=cipher, api=api, oauth_client=oauth, clock=clock)
    events: list[tuple[ConnectionEventKind, str]] = []

    async def on_changes(session, changes: tuple[ConnectionChange, ...]) -> None:
        events.extend((change.event, change.connection.connection_id) for change in changes)

    flows = ConnectionFlows(
        db=database,
        cipher=cipher,
        api=api,
        oauth_client=oauth,
        access_tokens=tokens,
        clock=clock,
        redirect_uri=REDIRECT,
        watch_topic=TOPIC,
        authorization_endpoint=gmail_sandbox.url + "/o/oauth2/v2/auth",
        on_changes=on_changes,
    )
    yield Harness(flows, tokens, database, gmail_sandbox, clock, cipher, oauth, api, events)


async def row_counts(db: Database) -> tuple[int, int]:
    async with db.read() as session:
        mailboxes = await session.scalar(select(func.count()).select_from(MailboxRow))
        connections = await session.scalar(select(func.count()).select_from(ConnectionRow))
    return int(mailboxes or 0), int(connections or 0)


async def test_R1_connect_stores_sealed_tokens_watches_and_starts_at_the_current_history(
    harness: Harness,
) -> None:
    before = harness.sandbox.admin.mailbox(ALICE)
    done = await harness.connect("u1", "L1", ALICE)
    assert done.outcome is ConnectOutcome.NEW and done.mailbox_email == ALICE
    assert done.connection.state is ConnectionState.CONNECTED
    assert done.connection.start_history_id == int(before["historyId"])
    assert done.connection.start_time == harness.clock.now()
    assert done.watch_expires_at is not None and ALICE in harness.watched()
    assert harness.events == [(ConnectionEventKind.CONNECTED, done.connection.connection_id)]
    async with harness.db.read() as session:
        row = await session.scalar(select(MailboxRow).where(MailboxRow.email == ALICE))
    assert row is not None and row.refresh_token_sealed is not None
    assert b"1//" not in row.refresh_token_sealed and b"ya29" not in (row.access_token_sealed or b"")
    assert await harness.grant_is_alive(await harness.refresh_token_of(ALICE))


async def test_forged_reused_and_expired_states_are_refused_and_nothing_is_stored(harness: Harness) -> None:
    started = await harness.flows.begin(user_id="u1", location_id="L1")
    query = harness.consent(started.authorization_url, ALICE)
    with pytest.raises(StateRejected, match="unknown"):
        await harness.flows.complete(state="forged-" + query["state"], code=query["code"])
    harness.clock.advance(dt.timedelta(minutes=11))
    with pytest.raises(StateRejected, match="expired"):
        await harness.flows.complete(state=query["state"], code=query["code"])
    assert await row_counts(harness.db) == (0, 0)

    started = await harness.flows.begin(user_id="u1", location_id="L1")
    query = harness.consent(started.authorization_url, ALICE)
    await harness.flows.complete(state=query["state"], code=query["code"])
    with pytest.raises(StateRejected, match="already used"):
        await harness.flows.complete(state=query["state"], code=query["code"])
    assert await row_counts(harness.db) == (1, 1)


async def test_an_unticked_scope_is_refused_by_name_and_nothing_is_connected(harness: Harness) -> None:
    with pytest.raises(MissingScopes, match=r"gmail\.send"):
        await harness.connect("u1", "L1", ALICE, scopes=["openid", "email", GMAIL_READONLY])
    assert await row_counts(harness.db) == (0, 0)
    assert harness.events == []


async def test_cancel_on_the_consent_page_is_refused(harness: Harness) -> None:
    started = await harness.flows.begin(user_id="u1", location_id="L1")
    query = harness.consent(started.authorization_url, ALICE, decision="deny")
    with pytest.raises(ConsentDenied, match="access_denied"):
        await harness.flows.complete(state=query["state"], error=query["error"])
    assert await row_counts(harness.db) == (0, 0)


async def test_R10_update_email_replaces_the_connection_and_releases_the_unused_old_mailbox(
    harness: Harness,
) -> None:
    first = await harness.connect("u1", "L1", ALICE)
    alice_grant = await harness.refresh_token_of(ALICE)
    second = await harness.connect("u1", "L1", BOB)
    assert second.outcome is ConnectOutcome.UPDATE_EMAIL
    assert second.replaced_connection_id == first.connection.connection_id
    assert (ConnectionEventKind.REPLACED, first.connection.connection_id) in harness.events
    async with harness.db.read() as session:
        active = await active_connection(session, "u1", "L1")
        old = await connections_of_mailbox(session, first.connection.mailbox_id)
    assert active is not None and active.connection_id == second.connection.connection_id
    assert [(c.state, c.replaced_by_connection_id) for c in old] == [
        (ConnectionState.REPLACED, second.connection.connection_id)
    ]
    assert harness.watched() == {BOB}
    assert not await harness.grant_is_alive(alice_grant)


async def test_R10_update_email_keeps_an_old_mailbox_that_another_location_uses(harness: Harness) -> None:
    await harness.connect("u1", "L1", ALICE)
    await harness.connect("u1", "L2", ALICE)
    await harness.connect("u1", "L1", BOB)
    assert harness.watched() == {ALICE, BOB}
    assert await harness.grant_is_alive(await harness.refresh_token_of(ALICE))


async def test_R11_disconnect_releases_the_mailbox_only_when_its_last_connection_ends(
    harness: Harness,
) -> None:
    in_l1 = await harness.connect("u1", "L1", ALICE)
    in_l2 = await harness.connect("u1", "L2", ALICE)
    assert in_l2.connection.start_history_id >= in_l1.connection.start_history_id
    grant = await harness.refresh_token_of(ALICE)
    ended = await harness.flows.disconnect(in_l1.connection.connection_id)
    assert ended.state is ConnectionState.DISCONNECTED
    assert harness.watched() == {ALICE} and await harness.grant_is_alive(grant)
    await harness.flows.disconnect(in_l2.connection.connection_id)
    assert harness.watched() == set()
    assert not await harness.grant_is_alive(grant)
    assert harness.events[-2:] == [
        (ConnectionEventKind.DISCONNECTED, in_l1.connection.connection_id),
        (ConnectionEventKind.DISCONNECTED, in_l2.connection.connection_id),
    ]


async def test_R12_reconnect_after_a_password_change_resumes_the_same_connection(harness: Harness) -> None:
    first = await harness.connect("u1", "L1", ALICE)
    harness.sandbox.admin.change_password(ALICE, "changed")
    harness.clock.advance(dt.timedelta(hours=2))  # the stored access token has expired: a refresh is needed
    with pytest.raises(ReconnectRequired):
        await harness.tokens.access_token(first.connection.mailbox_id)
    async with harness.db.read() as session:
        waiting = await active_connection(session, "u1", "L1")
    assert waiting is not None and waiting.state is ConnectionState.REAUTH_REQUIRED

    again = await harness.connect("u1", "L1", ALICE)
    assert again.outcome is ConnectOutcome.SAME_MAILBOX
    assert again.connection.connection_id == first.connection.connection_id
    assert again.connection.state is ConnectionState.CONNECTED
    assert again.connection.start_history_id == first.connection.start_history_id
    assert harness.events[-1] == (ConnectionEventKind.REAUTHORIZED, first.connection.connection_id)
    issued = await harness.tokens.access_token(first.connection.mailbox_id)
    assert issued.token.reveal()


async def test_watches_are_renewed_daily_with_a_status_per_mailbox(harness: Harness) -> None:
    alice = await harness.connect("u1", "L1", ALICE)
    bob = await harness.connect("u2", "L1", BOB)
    renewal = WatchRenewal(
        db=harness.db, api=harness.api, access_tokens=harness.tokens, clock=harness.clock, topic=TOPIC
    )
    assert await renewal.renew() == []
    [not_due] = await renewal.renew([alice.connection.mailbox_id])
    assert not_due.outcome is WatchRenewalOutcome.NOT_DUE

    day = dt.timedelta(days=1, minutes=1)
    harness.clock.advance(day)
    harness.sandbox.admin.advance_clock(day.total_seconds())
    harness.sandbox.admin.change_password(BOB, "changed")
    statuses = {s.mailbox_email: s for s in await renewal.renew()}
    assert statuses[ALICE].outcome is WatchRenewalOutcome.RENEWED
    assert statuses[ALICE].watch_expires_at is not None
    assert statuses[ALICE].watch_expires_at > harness.clock.now() + dt.timedelta(days=6)
    assert statuses[BOB].outcome is WatchRenewalOutcome.REAUTH_REQUIRED
    # Renewed today: not due again until tomorrow; the dead grant is no longer a candidate.
    assert await renewal.renew() == []

    harness.sandbox.admin.set_topic(TOPIC, publish_granted=False)
    [failed] = await renewal.renew([alice.connection.mailbox_id], force=True)
    assert failed.outcome is WatchRenewalOutcome.FAILED and "forbidden" in failed.error.lower()
    assert bob.connection.mailbox_id not in {s.mailbox_id for s in await renewal.renew()}
