"""Google's OAuth token endpoint for the connect flow: exchange an authorization code (with the PKCE verifier)
for tokens, and revoke a grant. Plain form POSTs on the adapter's thread pool; errors are classified."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from services.runtime.gmail.api import GmailApi
from services.runtime.gmail.credentials import OAuthClient
from services.runtime.gmail.errors import (
    GmailError,
    PermanentGmailError,
    RetryableGmailError,
    classify,
    oauth_error_code,
)


class AuthorizationCodeRejected(PermanentGmailError):
    """The token endpoint refused the code (expired, reused, wrong redirect URI or verifier, bad client)."""


@dataclass(frozen=True)
class GrantedTokens:
    """A token response; `refresh_token` is None when Google did not issue one (no offline access)."""

    access_token: str = field(repr=False)
    expiry: dt.datetime | None
    scopes: frozenset[str]
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)


async def exchange_code(
    api: GmailApi,
    client: OAuthClient,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    now: dt.datetime,
) -> GrantedTokens:
    """grant_type=authorization_code. Never retried: a code is single use, so a failure goes to the caller."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    status, body = await _post_form(api, client.token_uri, form, now=now)
    if status >= 500:
        raise RetryableGmailError(f"token endpoint answered {status}", status=status)
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        reason = oauth_error_code(body)
        raise AuthorizationCodeRejected(
            f"Google refused the authorization code: {reason or status}", status=status, reason=reason
        )
    expires_in = body.get("expires_in")
    return GrantedTokens(
        access_token=str(body["access_token"]),
        expiry=now + dt.timedelta(seconds=int(expires_in)) if expires_in is not None else None,
        scopes=frozenset(str(body.get("scope", "")).split()),
        refresh_token=body.get("refresh_token"),
        id_token=body.get("id_token"),
    )


async def revoke_token(api: GmailApi, client: OAuthClient, token: str, *, now: dt.datetime) -> bool:
    """Revokes the grant a refresh (or access) token belongs to; False when Google says it was already invalid."""
    status, body = await _post_form(api, client.revoke_uri, {"token": token}, now=now)
    if status == 200:
        return True
    if status == 400 and oauth_error_code(body) == "invalid_token":
        return False
    if status >= 500 or status == 429:
        raise RetryableGmailError(f"revoke endpoint answered {status}", status=status)
    raise PermanentGmailError(
        f"revoke endpoint answered {status}: {oauth_error_code(body)}",
        status=status,
        reason=oauth_error_code(body),
    )


async def _post_form(api: GmailApi, uri: str, form: dict[str, str], *, now: dt.datetime) -> tuple[int, Any]:
    def call() -> tuple[int, Any]:
        response, content = api.thread_http().request(
            uri,
            method="POST",
            body=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            body = json.loads(content.decode("utf-8")) if content else None
        except (UnicodeDecodeError, ValueError):
            body = None
        return int(response.status), body

    try:
        return await api.run(call)
    except Exception as exc:
        error: GmailError = classify(exc, now=now)
        raise error from exc
