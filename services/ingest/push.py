"""Gmail's Pub/Sub push: the envelope (pure) and the OIDC token check that proves Google sent it.

The envelope is the JSON Pub/Sub POSTs (reference/gmail_api.md 1.2): `message.data` is base64 of
`{"emailAddress": ..., "historyId": ...}`, where historyId arrives as a string or a number. The token is an
RS256 JWT signed by Google (iss accounts.google.com, aud = the configured audience, email = the push service
account, email_verified); anything else is refused before any work is queued.

Certificates are cached; a token under an unknown key id triggers at most one refetch per
`certs_refetch_interval_seconds`, so forged key ids cannot make the service hammer Google's certs URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
from google.auth import jwt

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})


class PushRejected(Exception):
    """A push that must not be acted on; `reason` is a short code, the message a sentence."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MailboxNotification:
    """What one push says: this mailbox changed, up to this history id."""

    email_address: str
    history_id: int
    pubsub_message_id: str


def parse_push_envelope(envelope: Mapping[str, Any]) -> MailboxNotification:
    """Decodes a Pub/Sub push body (camelCase or snake_case keys) into the mailbox notification."""
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise PushRejected("malformed_envelope", "push body has no 'message' object")
    return parse_pubsub_message(
        message.get("data"), str(message.get("messageId") or message.get("message_id") or "")
    )


def parse_pubsub_message(data: Any, pubsub_message_id: str) -> MailboxNotification:
    """Decodes `message.data` (base64 or base64url of the Gmail JSON, str or bytes) into the notification."""
    if isinstance(data, bytes | bytearray):
        raw = bytes(data)
        decoded = raw if raw.lstrip().startswith(b"{") else _b64(raw)
    elif isinstance(data, str) and data:
        decoded = _b64(data.encode("ascii", errors="replace"))
    else:
        raise PushRejected("malformed_envelope", "push message has no 'data'")
    try:
        payload = json.loads(decoded)
    except (ValueError, UnicodeDecodeError):
        raise PushRejected("malformed_data", "push data is not JSON") from None
    if not isinstance(payload, Mapping):
        raise PushRejected("malformed_data", "push data is not a JSON object")
    email = payload.get("emailAddress")
    if not isinstance(email, str) or "@" not in email:
        raise PushRejected("malformed_data", "push data has no emailAddress")
    history = payload.get("historyId")
    # Gmail documents a string; real traffic also carries a number (gmail_api.md 1.2).
    if isinstance(history, bool) or not isinstance(history, int | str):
        raise PushRejected("malformed_data", "push data has no historyId")
    try:
        history_id = int(history)
    except ValueError:
        raise PushRejected("malformed_data", f"historyId {history!r} is not a number") from None
    if history_id < 0:
        raise PushRejected("malformed_data", "historyId is negative")
    return MailboxNotification(email.strip().lower(), history_id, pubsub_message_id)


def _b64(raw: bytes) -> bytes:
    padded = raw.strip() + b"=" * (-len(raw.strip()) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace(b"+", b"-").replace(b"/", b"_"))
    except (binascii.Error, ValueError):
        raise PushRejected("malformed_data", "push data is not base64") from None


@dataclass(frozen=True)
class PushAuthConfig:
    """Who may push: the audience the subscription signs for and its service account."""

    audience: str
    service_account_email: str
    certs_url: str
    clock_skew_seconds: int = 10
    certs_ttl_seconds: float = 300.0
    # Unknown key ids refetch at most this often (Google rotates keys daily: one refetch soon finds a new one).
    certs_refetch_interval_seconds: float = 30.0


CertsFetcher = Callable[[str], Awaitable[Mapping[str, str]]]


class PushTokenVerifier:
    """Verifies push OIDC tokens against Google's (or the sandbox's) certificates, cached for a while."""

    def __init__(
        self,
        config: PushAuthConfig,
        fetch_certs: CertsFetcher,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._fetch_certs = fetch_certs
        self._monotonic = monotonic
        self._certs: Mapping[str, str] = {}
        self._fetched_at: float | None = None
        self._refetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, token: str | None) -> Mapping[str, Any]:
        """Returns the verified claims or raises PushRejected (the caller answers 401/UNAUTHENTICATED)."""
        if not token:
            raise PushRejected("missing_token", "push has no bearer token")
        certs = await self._current_certs(force=False)
        try:
            claims = self._decode(token, certs)
        except PushRejected as first:
            if first.reason != "unknown_key":
                raise
            # Google rotates its keys: one refetch before refusing a token signed by a new key.
            claims = self._decode(token, await self._current_certs(force=True))
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushRejected("wrong_issuer", f"token issuer {claims.get('iss')!r} is not Google")
        if claims.get("email") != self._config.service_account_email:
            raise PushRejected("wrong_service_account", "token was not issued to the push service account")
        if claims.get("email_verified") is not True:
            raise PushRejected("email_not_verified", "token's email is not verified")
        return claims

    def _decode(self, token: str, certs: Mapping[str, str]) -> Mapping[str, Any]:
        try:
            header = jwt.decode_header(token)
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            raise PushRejected("malformed_token", "push token is not a JWT") from None
        if header.get("kid") not in certs:
            raise PushRejected("unknown_key", "push token is signed by an unknown key")
        try:
            return jwt.decode(
                token,
                certs=dict(certs),
                audience=self._config.audience,
                clock_skew_in_seconds=self._config.clock_skew_seconds,
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            raise PushRejected("invalid_token", f"push token refused: {_first_line(exc)}") from None

    async def _current_certs(self, *, force: bool) -> Mapping[str, str]:
        async with self._lock:
            now = self._monotonic()
            due = self._fetched_at is None or now - self._fetched_at > self._config.certs_ttl_seconds
            if force and not due:
                # An unknown key id: refetch, unless one did within the interval (forged ids cost nothing).
                if (
                    self._refetched_at is not None
                    and now - self._refetched_at < self._config.certs_refetch_interval_seconds
                ):
                    return self._certs
                self._refetched_at = now
                due = True
            if due:
                # Counted from the attempt, so a failing certs URL is not retried by every push either.
                self._fetched_at = now
                self._certs = await self._fetch_certs(self._config.certs_url)
            return self._certs


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
