"""Conformance: Google OAuth as google-auth and a browser see it (consent, code + PKCE, refresh, revoke, errors)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import google.auth.transport.requests
import pytest
from google.auth.exceptions import RefreshError
from googleapiclient.errors import HttpError

from sandbox.client import GMAIL_MODIFY, build_gmail_service, credentials_for
from tests.fixtures.sandbox import GmailSandbox

ALICE = "alice@example.com"
READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SEND = "https://www.googleapis.com/auth/gmail.send"
REDIRECT = "http://127.0.0.1:9/callback"


def post_form(url: str, fields: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def authorization_url(base: str, challenge: str, scopes: str = f"openid email {GMAIL_MODIFY}") -> str:
    return (
        base
        + "/o/oauth2/v2/auth?"
        + urllib.parse.urlencode(
            {
                "client_id": "sandbox-client.apps.googleusercontent.com",
                "redirect_uri": REDIRECT,
                "response_type": "code",
                "scope": scopes,
                "state": "st-1",
                "access_type": "offline",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )


def pkce_pair() -> tuple[str, str]:
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def exchange(base: str, code: str, verifier: str, redirect_uri: str = REDIRECT) -> tuple[int, dict]:
    return post_form(
        base + "/token",
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": "sandbox-client.apps.googleusercontent.com",
            "client_secret": "sandbox-secret",
        },
    )


def test_scripted_consent_code_exchange_with_pkce(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/protocols/oauth2/native-app: code flow with PKCE S256."""
    gmail_sandbox.create_mailbox(ALICE)
    verifier, challenge = pkce_pair()
    redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge), ALICE)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))
    assert redirect.startswith(REDIRECT) and query["state"] == "st-1"
    status, wrong = exchange(gmail_sandbox.url, query["code"], "w" * 50)
    assert (status, wrong["error"]) == (400, "invalid_grant")
    redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge), ALICE)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))["code"]
    status, mismatch = exchange(gmail_sandbox.url, code, verifier, redirect_uri="http://127.0.0.1:9/other")
    assert (status, mismatch["error"]) == (400, "redirect_uri_mismatch")
    redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge), ALICE)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))["code"]
    status, tokens = exchange(gmail_sandbox.url, code, verifier)
    assert status == 200 and tokens["expires_in"] == 3599 and tokens["refresh_token"] and tokens["id_token"]
    status, reused = exchange(gmail_sandbox.url, code, verifier)
    assert (status, reused["error"]) == (400, "invalid_grant")
    info = json.loads(
        urllib.request.urlopen(
            gmail_sandbox.url + "/oauth2/v3/tokeninfo?access_token=" + tokens["access_token"]
        ).read()
    )
    assert GMAIL_MODIFY in info["scope"].split() and info["email"] == ALICE


def test_consent_page_is_a_plain_form_where_a_scope_can_be_unticked(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/protocols/oauth2/web-server: the user may grant fewer scopes."""
    gmail_sandbox.create_mailbox(ALICE, password="pw")
    _, challenge = pkce_pair()
    page = urllib.request.urlopen(
        authorization_url(gmail_sandbox.url, challenge, f"{READONLY} {SEND}")
    ).read()
    assert b"Continue" in page and b"Cancel" in page and b'type="checkbox"' in page
    hidden = dict(re.findall(rb'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
    fields = [(k.decode(), v.decode().replace("&amp;", "&")) for k, v in hidden.items()]
    fields += [("email", ALICE), ("password", "pw"), ("scope", READONLY), ("decision", "allow")]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answered:
        opener.open(gmail_sandbox.url + "/o/oauth2/v2/auth/consent", urllib.parse.urlencode(fields).encode())
    location = answered.value.headers["Location"]
    assert answered.value.code == 302
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["scope"] == READONLY
    denied = [f for f in fields if f[0] != "decision"] + [("decision", "deny")]
    with pytest.raises(urllib.error.HTTPError) as cancelled:
        opener.open(gmail_sandbox.url + "/o/oauth2/v2/auth/consent", urllib.parse.urlencode(denied).encode())
    assert "error=access_denied" in cancelled.value.headers["Location"]


def test_refresh_works_then_invalid_grant_after_password_change(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/protocols/oauth2#expiration: password change kills Gmail grants."""
    gmail_sandbox.create_mailbox(ALICE)
    tokens = gmail_sandbox.tokens(ALICE)
    credentials = credentials_for(gmail_sandbox.url, tokens, with_access_token=False)
    gmail = build_gmail_service(gmail_sandbox.url, credentials)
    assert gmail.users().getProfile(userId="me").execute()["emailAddress"] == ALICE
    assert credentials.token and credentials.token != tokens["access_token"]
    gmail_sandbox.admin.change_password(ALICE, "new-password")
    with pytest.raises(RefreshError) as refused:
        credentials.refresh(google.auth.transport.requests.Request())
    assert refused.value.args[1] == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert refused.value.retryable is False


def test_revoked_grant_fails_refresh_and_calls(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke: revoke via /revoke."""
    gmail_sandbox.create_mailbox(ALICE)
    tokens = gmail_sandbox.tokens(ALICE)
    status, _ = post_form(gmail_sandbox.url + "/revoke", {"token": tokens["refresh_token"]})
    assert status == 200
    status, again = post_form(gmail_sandbox.url + "/revoke", {"token": tokens["refresh_token"]})
    assert (status, again["error"]) == (400, "invalid_token")
    credentials = credentials_for(gmail_sandbox.url, tokens)
    gmail = build_gmail_service(gmail_sandbox.url, credentials)
    with pytest.raises(RefreshError):
        gmail.users().getProfile(userId="me").execute()


def test_expired_access_token_is_401_and_google_auth_refreshes(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 401 Invalid Credentials."""
    gmail_sandbox.create_mailbox(ALICE)
    tokens = gmail_sandbox.tokens(ALICE)
    gmail_sandbox.admin.advance_clock(3600)
    request = urllib.request.Request(
        gmail_sandbox.url + "/gmail/v1/users/me/profile",
        headers={"Authorization": "Bearer " + tokens["access_token"]},
    )
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(request)
    error = json.loads(unauthorized.value.read())["error"]
    assert unauthorized.value.code == 401 and error["errors"][0]["reason"] == "authError"
    credentials = credentials_for(gmail_sandbox.url, tokens)
    gmail = build_gmail_service(gmail_sandbox.url, credentials)
    assert gmail.users().getProfile(userId="me").execute()["emailAddress"] == ALICE
    assert credentials.token != tokens["access_token"]


def test_missing_token_is_401_and_wrong_scope_is_403(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/workspace/gmail/api/guides/handle-errors: 401 and 403 insufficientPermissions."""
    gmail_sandbox.create_mailbox(ALICE)
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(gmail_sandbox.url + "/gmail/v1/users/me/profile")
    assert anonymous.value.code == 401
    send_only = gmail_sandbox.gmail(ALICE, scopes=[SEND])
    with pytest.raises(HttpError) as forbidden:
        send_only.users().messages().list(userId="me").execute()
    assert forbidden.value.resp.status == 403
    assert forbidden.value.error_details[0]["reason"] == "insufficientPermissions"
    metadata = gmail_sandbox.gmail(ALICE, scopes=["https://www.googleapis.com/auth/gmail.metadata"])
    with pytest.raises(HttpError) as no_query:
        metadata.users().messages().list(userId="me", q="in:inbox").execute()
    assert no_query.value.resp.status == 403
    assert metadata.users().messages().list(userId="me").execute()["resultSizeEstimate"] == 0


def test_certs_userinfo_and_id_token_verify(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/openid-connect/openid-connect: ID token and userinfo."""
    from google.oauth2 import id_token

    gmail_sandbox.create_mailbox(ALICE)
    verifier, challenge = pkce_pair()
    redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge), ALICE)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))["code"]
    _, tokens = exchange(gmail_sandbox.url, code, verifier)
    claims = id_token.verify_token(
        tokens["id_token"],
        google.auth.transport.requests.Request(),
        audience="sandbox-client.apps.googleusercontent.com",
        certs_url=gmail_sandbox.url + "/oauth2/v1/certs",
    )
    assert claims["email"] == ALICE and claims["iss"] == "https://accounts.google.com"
    request = urllib.request.Request(
        gmail_sandbox.url + "/oauth2/v3/userinfo",
        headers={"Authorization": "Bearer " + tokens["access_token"]},
    )
    assert json.loads(urllib.request.urlopen(request).read())["email"] == ALICE


def test_refresh_token_only_on_first_consent_unless_prompt_consent(gmail_sandbox: GmailSandbox) -> None:
    """https://developers.google.com/identity/protocols/oauth2/web-server#offline: a refresh token comes with the
    first exchange; later ones need prompt=consent to get another."""
    gmail_sandbox.create_mailbox(ALICE)
    verifier, challenge = pkce_pair()

    def connect(extra: str = "") -> dict:
        redirect = gmail_sandbox.admin.approve(authorization_url(gmail_sandbox.url, challenge) + extra, ALICE)
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query))["code"]
        return exchange(gmail_sandbox.url, code, verifier)[1]

    assert "refresh_token" in connect()
    assert "refresh_token" not in connect()
    assert "refresh_token" in connect("&prompt=consent")
