"""The connect flow's pieces against the sandbox's Google OAuth: authorization URL with PKCE, consent, code
exchange, granted-scope check, revocation (the auth domain plus the Gmail adapter, no service process)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from services.auth.domain import (
    GMAIL_READONLY,
    MissingScopes,
    accept_state,
    authorization_url,
    begin_connect,
    check_granted_scopes,
)
from services.runtime.gmail import (
    AuthorizationCodeRejected,
    GmailApi,
    GmailClient,
    GmailEndpoint,
    OAuthClient,
    PermanentAuthFailure,
    exchange_code,
    fixed_access_token,
    refresh_access_token,
    revoke_token,
)
from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
REDIRECT = "http://127.0.0.1:9/oauth/callback"
CLIENT_ID = "crm-test.apps.googleusercontent.com"
SECRET = "crm-test-secret"


@pytest.fixture
def world(gmail_sandbox: GmailSandbox) -> GmailSandbox:
    gmail_sandbox.create_mailbox(ALICE)
    gmail_sandbox.admin.register_client(CLIENT_ID, SECRET, [REDIRECT])
    return gmail_sandbox


@pytest.fixture
def api(world: GmailSandbox) -> Iterator[GmailApi]:
    gmail_api = GmailApi(GmailEndpoint(root_url=world.url))
    yield gmail_api
    gmail_api.close()


def oauth_client(world: GmailSandbox) -> OAuthClient:
    return OAuthClient(CLIENT_ID, SECRET, token_uri=world.url + "/token", revoke_uri=world.url + "/revoke")


def consent(world: GmailSandbox, scopes: list[str] | None = None):
    now = dt.datetime.now(dt.UTC)
    flow = begin_connect(user_id="u1", location_id="L1", redirect_uri=REDIRECT, now=now)
    url = authorization_url(
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT,
        state=flow.state,
        code_verifier=flow.record.code_verifier,
        endpoint=world.url + "/o/oauth2/v2/auth",
    )
    redirected = world.admin.approve(url, ALICE, scopes=scopes)
    query = {key: values[0] for key, values in parse_qs(urlsplit(redirected).query).items()}
    return flow, query, now


async def test_connect_flow_exchanges_the_code_and_the_grant_works_until_revoked(
    api: GmailApi, world: GmailSandbox
) -> None:
    flow, query, now = consent(world)
    record = accept_state(flow.record, query["state"], now=now, user_id="u1", location_id="L1")
    tokens = await exchange_code(
        api,
        oauth_client(world),
        code=query["code"],
        redirect_uri=REDIRECT,
        code_verifier=record.code_verifier,
        now=now,
    )
    assert tokens.refresh_token and tokens.expiry and tokens.expiry > now
    check_granted_scopes(tokens.scopes)
    profile = await GmailClient(api, fixed_access_token(tokens.access_token)).get_profile()
    assert profile.email_address == ALICE
    refreshed = await refresh_access_token(api, oauth_client(world), tokens.refresh_token, now=now)
    assert refreshed.access_token

    assert await revoke_token(api, oauth_client(world), tokens.refresh_token, now=now)
    with pytest.raises(PermanentAuthFailure):
        await refresh_access_token(api, oauth_client(world), tokens.refresh_token, now=now)
    assert not await revoke_token(api, oauth_client(world), tokens.refresh_token, now=now)


async def test_a_code_is_refused_with_the_wrong_verifier_and_when_reused(
    api: GmailApi, world: GmailSandbox
) -> None:
    flow, query, now = consent(world)
    with pytest.raises(AuthorizationCodeRejected):
        await exchange_code(
            api,
            oauth_client(world),
            code=query["code"],
            redirect_uri=REDIRECT,
            code_verifier="x" * 43,
            now=now,
        )
    flow, query, now = consent(world)
    verifier = flow.record.code_verifier
    await exchange_code(
        api, oauth_client(world), code=query["code"], redirect_uri=REDIRECT, code_verifier=verifier, now=now
    )
    with pytest.raises(AuthorizationCodeRejected) as reused:
        await exchange_code(
            api,
            oauth_client(world),
            code=query["code"],
            redirect_uri=REDIRECT,
            code_verifier=verifier,
            now=now,
        )
    assert reused.value.reason == "invalid_grant"


async def test_an_unticked_send_scope_is_refused_by_name(api: GmailApi, world: GmailSandbox) -> None:
    flow, query, now = consent(world, scopes=["openid", "email", GMAIL_READONLY])
    tokens = await exchange_code(
        api,
        oauth_client(world),
        code=query["code"],
        redirect_uri=REDIRECT,
        code_verifier=flow.record.code_verifier,
        now=now,
    )
    with pytest.raises(MissingScopes, match=r"gmail\.send"):
        check_granted_scopes(tokens.scopes)
