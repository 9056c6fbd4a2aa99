"""GetAccessToken's core on the sandbox and a real database: one refresh for many concurrent callers, also across
two replicas; a dead grant (password changed) turns the mailbox's connections REAUTH_REQUIRED once (R12)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from sandbox.grants import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from services.auth.access_tokens import AccessTokens
from services.auth.crypto import KeyRing, SecretToken, TokenCipher, generate_key_text
from services.auth.domain import Connection, ConnectionChange, ConnectionState, ReconnectRequired
from services.auth.store import (
    connections_of_mailbox,
    ensure_mailbox,
    metadata,
    order_for_saving,
    save_connections,
    store_grant,
)
from services.runtime.clock import SystemClock
from services.runtime.db import Database, open_database
from services.runtime.gmail import (
    GmailApi,
    GmailClient,
    GmailEndpoint,
    OAuthClient,
    RefreshedToken,
    fixed_access_token,
    refresh_access_token,
)
from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
CIPHER = TokenCipher(KeyRing.parse(generate_key_text(1)))
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def api(gmail_sandbox: GmailSandbox) -> Iterator[GmailApi]:
    gmail_api = GmailApi(GmailEndpoint(root_url=gmail_sandbox.url, max_workers=4))
    yield gmail_api
    gmail_api.close()


@pytest.fixture
async def mailbox_id(database: Database, gmail_sandbox: GmailSandbox) -> str:
    """Alice's mailbox with a live grant whose stored access token has already expired, used in two locations."""
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    gmail_sandbox.create_mailbox(ALICE)
    tokens = gmail_sandbox.tokens(ALICE, [GMAIL_MODIFY])
    async with database.write() as session:
        mailbox = await ensure_mailbox(session, ALICE, new_mailbox_id="mb-alice", now=NOW)
        await store_grant(
            session,
            CIPHER,
            mailbox,
            refresh_token=SecretToken(tokens["refresh_token"]),
            access_token=SecretToken("ya29.expired"),
            access_token_expires_at=NOW - dt.timedelta(minutes=1),
            granted_scopes=[GMAIL_MODIFY],
        )
        await save_connections(
            session,
            order_for_saving(
                Connection(f"c{n}", "u1", f"L{n}", mailbox, ConnectionState.CONNECTED, 1, NOW, NOW)
                for n in (1, 2)
            ),
        )
    return mailbox


class CountedRefresher:
    """The real refresh against the sandbox's token endpoint, counted."""

    def __init__(self, api: GmailApi, sandbox: GmailSandbox) -> None:
        self.api = api
        self.client = OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, token_uri=sandbox.url + "/token")
        self.calls = 0

    async def __call__(self, refresh_token: str) -> RefreshedToken:
        self.calls += 1
        await asyncio.sleep(0.05)  # widen the window in which other callers pile up
        return await refresh_access_token(self.api, self.client, refresh_token, now=dt.datetime.now(dt.UTC))


def tokens_service(
    db: Database, api: GmailApi, refresher: CountedRefresher, owner: str, **extra
) -> AccessTokens:
    return AccessTokens(
        db=db,
        cipher=CIPHER,
        api=api,
        oauth_client=refresher.client,
        clock=SystemClock(),
        owner=owner,
        refresher=refresher,
        wait_step=0.02,
        **extra,
    )


async def test_concurrent_callers_cause_one_refresh_and_get_a_working_token(
    database: Database, api: GmailApi, gmail_sandbox: GmailSandbox, mailbox_id: str
) -> None:
    refresher = CountedRefresher(api, gmail_sandbox)
    service = tokens_service(database, api, refresher, "replica-a")
    issued = await asyncio.gather(*(service.access_token(mailbox_id) for _ in range(10)))
    assert refresher.calls == 1
    assert len({i.token for i in issued}) == 1
    profile = await GmailClient(api, fixed_access_token(issued[0].token.reveal())).get_profile()
    assert profile.email_address == ALICE


async def test_two_replicas_refresh_once(
    database: Database, database_target, api: GmailApi, gmail_sandbox: GmailSandbox, mailbox_id: str
) -> None:
    refresher = CountedRefresher(api, gmail_sandbox)
    replicas = [open_database(database_target.url, schema=database_target.schema) for _ in range(2)]
    try:
        services = [tokens_service(db, api, refresher, f"replica-{n}") for n, db in enumerate(replicas)]
        issued = await asyncio.gather(*(s.access_token(mailbox_id) for s in services for _ in range(5)))
    finally:
        for replica in replicas:
            await replica.dispose()
    assert refresher.calls == 1
    assert len({i.token for i in issued}) == 1


async def test_R12_a_dead_grant_requires_reauth_once_without_a_retry_storm(
    database: Database, api: GmailApi, gmail_sandbox: GmailSandbox, mailbox_id: str
) -> None:
    refresher = CountedRefresher(api, gmail_sandbox)
    announced: list[tuple[str, tuple[ConnectionChange, ...], str]] = []

    async def on_grant_failed(
        session, mailbox: str, changes: tuple[ConnectionChange, ...], reason: str
    ) -> None:
        announced.append((mailbox, changes, reason))

    service = tokens_service(database, api, refresher, "replica-a", on_grant_failed=on_grant_failed)
    gmail_sandbox.admin.change_password(ALICE, "changed")
    for _ in range(3):
        with pytest.raises(ReconnectRequired) as refused:
            await service.access_token(mailbox_id)
        assert refused.value.reason == "invalid_grant"
    assert refresher.calls == 1
    assert [(m, len(changes), reason) for m, changes, reason in announced] == [
        (mailbox_id, 2, "invalid_grant")
    ]
    async with database.read() as session:
        states = {c.connection_id: c.state for c in await connections_of_mailbox(session, mailbox_id)}
    assert states == {"c1": ConnectionState.REAUTH_REQUIRED, "c2": ConnectionState.REAUTH_REQUIRED}

    # Reconnecting stores a new grant; tokens flow again.
    tokens = gmail_sandbox.tokens(ALICE, [GMAIL_MODIFY])
    async with database.write() as session:
        await store_grant(
            session,
            CIPHER,
            mailbox_id,
            refresh_token=SecretToken(tokens["refresh_token"]),
            access_token=SecretToken("ya29.expired"),
            access_token_expires_at=NOW - dt.timedelta(minutes=1),
            granted_scopes=[GMAIL_MODIFY],
        )
    issued = await service.access_token(mailbox_id)
    assert refresher.calls == 2
    assert (
        await GmailClient(api, fixed_access_token(issued.token.reveal())).get_profile()
    ).email_address == ALICE
