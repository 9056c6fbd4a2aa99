"""Refresh-token credentials, for the auth service only (the one place a refresh token is ever used)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import google.oauth2.credentials
import google_auth_httplib2

from services.runtime.gmail.api import GmailApi
from services.runtime.gmail.errors import classify

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URI = "https://oauth2.googleapis.com/revoke"


@dataclass(frozen=True)
class OAuthClient:
    """The OAuth client registration; the endpoints point at Google or the sandbox."""

    client_id: str
    client_secret: str = field(repr=False)
    token_uri: str = GOOGLE_TOKEN_URI
    revoke_uri: str = GOOGLE_REVOKE_URI


@dataclass(frozen=True)
class RefreshedToken:
    """What a refresh returned; `refresh_token` is set only when Google rotated it (persist it first)."""

    access_token: str = field(repr=False)
    expiry: dt.datetime | None
    scopes: frozenset[str]
    refresh_token: str | None = field(default=None, repr=False)


def refreshable_credentials(
    client: OAuthClient, refresh_token: str, scopes: Sequence[str] | None = None
) -> google.oauth2.credentials.Credentials:
    """Credentials that refresh against `client.token_uri` (built directly: from_authorized_user_info would
    override token_uri with Google's)."""
    return google.oauth2.credentials.Credentials(
        token=None,
        refresh_token=refresh_token,
        token_uri=client.token_uri,
        client_id=client.client_id,
        client_secret=client.client_secret,
        scopes=list(scopes) if scopes else None,
    )


async def refresh_access_token(
    api: GmailApi,
    client: OAuthClient,
    refresh_token: str,
    *,
    now: dt.datetime,
    scopes: Sequence[str] | None = None,
) -> RefreshedToken:
    """One refresh against the token endpoint, on the pool; failures are classified (invalid_grant and friends
    become PermanentAuthFailure)."""
    credentials = refreshable_credentials(client, refresh_token, scopes)

    def call() -> None:
        credentials.refresh(google_auth_httplib2.Request(api.thread_http()))

    try:
        await api.run(call)
    except Exception as exc:
        raise classify(exc, now=now) from exc
    expiry = credentials.expiry.replace(tzinfo=dt.UTC) if credentials.expiry else None
    rotated = credentials.refresh_token if credentials.refresh_token != refresh_token else None
    return RefreshedToken(
        access_token=str(credentials.token),
        expiry=expiry,
        scopes=frozenset(credentials.granted_scopes or credentials.scopes or ()),
        refresh_token=rotated,
    )
