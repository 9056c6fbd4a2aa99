"""OAuth clients, grants, authorization codes and tokens: who may call Gmail as whom, with which scopes."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.state import MailState

GMAIL_SCOPE_PREFIXES = ("https://mail.google.com/", "https://www.googleapis.com/auth/gmail.")
SCOPE_ALIASES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}
DEFAULT_CLIENT_ID = "sandbox-client.apps.googleusercontent.com"
DEFAULT_CLIENT_SECRET = "sandbox-secret"
CODE_LIFETIME_MS = 10 * 60 * 1000
# "A limit of 100 refresh tokens per Google Account per OAuth 2.0 client ID"; the oldest stops working silently.
LIVE_REFRESH_TOKENS_PER_CLIENT = 100


class OAuthError(Exception):
    """An OAuth endpoint error in Google's `{"error", "error_description"}` shape."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def expired_or_revoked() -> OAuthError:
    return OAuthError(400, "invalid_grant", "Token has been expired or revoked.")


def normalize_scopes(scopes: list[str] | str) -> list[str]:
    items = scopes.split() if isinstance(scopes, str) else scopes
    return list(dict.fromkeys(SCOPE_ALIASES.get(s, s) for s in items if s))


def has_gmail_scope(scopes: list[str]) -> bool:
    return any(s.startswith(GMAIL_SCOPE_PREFIXES) for s in scopes)


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class Grant:
    """One consent: a refresh token for one mailbox, one client and a set of scopes."""

    address: str
    client_id: str
    scopes: list[str]
    refresh_token: str
    credential_epoch: int
    revoked: bool = False
    issued_refresh: bool = True


@dataclass
class AccessToken:
    token: str
    grant: Grant
    scopes: list[str]
    expires_at_ms: int


@dataclass
class AuthorizationCode:
    code: str
    address: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    code_challenge: str | None
    code_challenge_method: str
    offline: bool
    forced_consent: bool
    nonce: str | None
    expires_at_ms: int


@dataclass
class TokenSet:
    access: AccessToken
    refresh_token: str | None

    def response(self, now_ms: int, id_token: str | None = None) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access.token,
            "expires_in": max(0, -(-(self.access.expires_at_ms - now_ms) // 1000)),
            "scope": " ".join(self.access.scopes),
            "token_type": "Bearer",
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        if id_token:
            body["id_token"] = id_token
        return body


class GrantRegistry:
    """Clients, grants and tokens; a password change or a revocation kills refresh as Google does."""

    def __init__(
        self, mail: MailState, now_ms: Callable[[], int], access_token_lifetime_s: int = 3599
    ) -> None:
        self.mail = mail
        self.now_ms = now_ms
        self.access_token_lifetime_s = access_token_lifetime_s
        self.clients: dict[str, Client] = {}
        self.grants: dict[str, Grant] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.register_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, [])

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> Client:
        client = Client(client_id, client_secret, list(redirect_uris))
        self.clients[client_id] = client
        return client

    def client(self, client_id: str, client_secret: str | None, check_secret: bool = True) -> Client:
        found = self.clients.get(client_id)
        if found is None:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        if check_secret and client_secret != found.client_secret:
            raise OAuthError(401, "invalid_client", "Unauthorized")
        return found

    def check_redirect_uri(self, client: Client, redirect_uri: str) -> None:
        if client.redirect_uris and redirect_uri not in client.redirect_uris:
            raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")

    # -- issuing ---------------------------------------------------------------------------------------------

    def _issue_access(self, grant: Grant, scopes: list[str]) -> AccessToken:
        token = AccessToken(
            token="ya29.sandbox-" + secrets.token_urlsafe(24),
            grant=grant,
            scopes=scopes,
            expires_at_ms=self.now_ms() + self.access_token_lifetime_s * 1000,
        )
        self.access_tokens[token.token] = token
        return token

    def _new_grant(self, address: str, client_id: str, scopes: list[str]) -> Grant:
        """A consent, tied to the mailbox's current password so that a change ends it."""
        mailbox = self.mail.mailbox(address)
        grant = Grant(
            address=mailbox.address,
            client_id=client_id,
            scopes=scopes,
            refresh_token="1//sandbox-" + secrets.token_urlsafe(32),
            credential_epoch=mailbox.credential_epoch,
        )
        self.grants[grant.refresh_token] = grant
        live = [
            g
            for g in self.grants.values()
            if g.address == grant.address and g.client_id == client_id and not g.revoked
        ]
        for oldest in live[: max(0, len(live) - LIVE_REFRESH_TOKENS_PER_CLIENT)]:
            oldest.revoked = True
        return grant

    def grant_directly(self, address: str, client_id: str, scopes: list[str]) -> TokenSet:
        """A consent given without the browser round trip (admin API, for tests)."""
        mailbox = self.mail.mailbox(address)
        if client_id not in self.clients:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        grant = self._new_grant(mailbox.address, client_id, normalize_scopes(scopes))
        return TokenSet(access=self._issue_access(grant, grant.scopes), refresh_token=grant.refresh_token)

    def issue_code(
        self,
        address: str,
        client_id: str,
        redirect_uri: str,
        scopes: list[str],
        code_challenge: str | None,
        code_challenge_method: str | None,
        offline: bool,
        nonce: str | None,
        forced_consent: bool = False,
    ) -> str:
        self.mail.mailbox(address)
        code = "4/sandbox-" + secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code,
            address=address.lower(),
            client_id=client_id,
            redirect_uri=redirect_uri,
            scopes=normalize_scopes(scopes),
            code_challenge=code_challenge,
            code_challenge_method=(code_challenge_method or "plain").upper() if code_challenge else "",
            offline=offline,
            forced_consent=forced_consent,
            nonce=nonce,
            expires_at_ms=self.now_ms() + CODE_LIFETIME_MS,
        )
        return code

    def exchange_code(
        self, code: str, client: Client, redirect_uri: str, code_verifier: str | None
    ) -> tuple[TokenSet, AuthorizationCode]:
        found = self.codes.pop(code, None)
        if found is None or found.expires_at_ms < self.now_ms() or found.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "Bad Request")
        if redirect_uri != found.redirect_uri:
            raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
        if found.code_challenge:
            if not code_verifier:
                raise OAuthError(400, "invalid_grant", "Missing code verifier.")
            if found.code_challenge_method == "S256":
                digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
                computed = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            else:
                computed = code_verifier
            if computed != found.code_challenge:
                raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
        # Google hands out a refresh token on the first exchange for a user and client, and again only when
        # the user was asked to consent anew (prompt=consent).
        already_granted = any(
            g.address == found.address
            and g.client_id == client.client_id
            and not g.revoked
            and g.issued_refresh
            for g in self.grants.values()
        )
        grant = self._new_grant(found.address, client.client_id, found.scopes)
        access = self._issue_access(grant, grant.scopes)
        hand_out = found.offline and (found.forced_consent or not already_granted)
        grant.issued_refresh = hand_out
        return TokenSet(access=access, refresh_token=grant.refresh_token if hand_out else None), found

    def refresh(self, refresh_token: str, client: Client, scope: str | None) -> TokenSet:
        grant = self.grants.get(refresh_token)
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            raise expired_or_revoked()
        mailbox = self.mail.mailboxes.get(grant.address)
        if mailbox is None:
            raise expired_or_revoked()
        if has_gmail_scope(grant.scopes) and mailbox.credential_epoch != grant.credential_epoch:
            raise expired_or_revoked()
        scopes = grant.scopes
        if scope:
            asked = normalize_scopes(scope)
            if not set(asked) <= set(grant.scopes):
                raise OAuthError(400, "invalid_scope", "Some requested scopes were invalid.")
            scopes = asked
        return TokenSet(access=self._issue_access(grant, scopes), refresh_token=None)

    # -- checking and revoking -------------------------------------------------------------------------------

    def authenticate(self, token: str) -> AccessToken | None:
        """The live access token for a bearer value, or None when unknown, expired or revoked."""
        found = self.access_tokens.get(token)
        if found is None or found.grant.revoked or found.expires_at_ms <= self.now_ms():
            return None
        return found

    def revoke_token(self, token: str) -> bool:
        """Revoking either token of a grant revokes the grant, as Google's revoke endpoint does."""
        grant = self.grants.get(token)
        if grant is None:
            access = self.access_tokens.get(token)
            grant = access.grant if access else None
        if grant is None or grant.revoked:
            return False
        grant.revoked = True
        return True

    def expire_access_tokens(self, address: str) -> int:
        """Ends the life of every live access token of a mailbox now (as if an hour had passed for it alone):
        its next Gmail call is refused with 401, and only a refresh gets a new one."""
        now = self.now_ms()
        count = 0
        for access in self.access_tokens.values():
            if access.grant.address == address.lower() and access.expires_at_ms > now:
                access.expires_at_ms = now
                count += 1
        return count

    def revoke_grants(self, address: str, client_id: str | None = None) -> int:
        count = 0
        for grant in self.grants.values():
            if (
                grant.address == address.lower()
                and not grant.revoked
                and client_id in (None, grant.client_id)
            ):
                grant.revoked = True
                count += 1
        return count
