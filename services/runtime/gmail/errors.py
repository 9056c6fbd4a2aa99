"""What can go wrong when talking to Gmail or Google OAuth, sorted into the few classes callers act on.

`classify` turns whatever the client libraries raised (HttpError, RefreshError, transport errors) into one
of these, so no caller ever inspects a status code or a Google error body itself.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from email.utils import parsedate_to_datetime
from typing import Any

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

# OAuth error codes after which a refresh token (or the whole grant) will never work again without the user
# (RFC 6749 section 5.2, plus Google's admin_policy_enforced).
PERMANENT_OAUTH_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "admin_policy_enforced"}
)
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# A Gmail 403 with one of these reasons means the grant cannot do what we need until the user reconnects.
_AUTH_403_REASONS = frozenset({"insufficientPermissions", "domainPolicy"})
_RETRY_AFTER_TIME = re.compile(r"Retry after (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z)")
_MAIL_SENDING = "(Mail sending)"


class GmailError(Exception):
    """Base of every error the Gmail adapter raises; never carries a token."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class PermanentAuthFailure(GmailError):
    """The grant is dead or insufficient (invalid_grant, revoked, missing scopes): the user must reconnect."""


class AccessTokenRejected(GmailError):
    """Gmail refused the access token it was given (expired or revoked): ask the auth service for a new one."""


class RetryableGmailError(GmailError):
    """A transient failure (rate limit, 5xx, network); `retry_at` is when Google asked us to come back."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.retry_at = retry_at


class GmailNotFound(GmailError):
    """The resource does not exist (deleted message, or a history id older than Gmail keeps)."""


class HistoryExpired(GmailNotFound):
    """history.list answered 404 for the start history id: the cursor is gone, the mailbox must resync."""


class SendingLimitReached(GmailError):
    """The mailbox hit Gmail's daily sending limit; no send can succeed before `retry_at`."""

    def __init__(self, message: str, *, status: int | None = None, retry_at: dt.datetime | None) -> None:
        super().__init__(message, status=status, reason="rateLimitExceeded")
        self.retry_at = retry_at


class PermanentGmailError(GmailError):
    """A failure that repeating the same request cannot fix (bad request, forbidden, too large)."""


class MessageTooLarge(PermanentGmailError):
    """The message is over Gmail's 35 MiB limit for messages.send, so it was not sent."""


class SendOutcomeUnknown(GmailError):
    """messages.send may or may not have been accepted: search Sent for the message before sending again."""


def classify(exc: BaseException, *, now: dt.datetime) -> GmailError:
    """The adapter's error for an exception raised by google-api-python-client, google-auth or the network."""
    if isinstance(exc, GmailError):
        return exc
    if isinstance(exc, HttpError):
        return _classify_http_error(exc, now=now)
    if isinstance(exc, auth_exceptions.RefreshError):
        return _classify_refresh_error(exc)
    if isinstance(exc, auth_exceptions.TransportError):
        return RetryableGmailError(f"could not reach Google's token endpoint: {type(exc).__name__}")
    if isinstance(exc, (httplib2.HttpLib2Error, OSError)):
        return RetryableGmailError(f"network error talking to Gmail: {type(exc).__name__}: {exc}")
    return PermanentGmailError(f"unexpected error from the Gmail client: {type(exc).__name__}: {exc}")


def oauth_error_code(body: Any) -> str | None:
    """The RFC 6749 `error` code of an OAuth error body ({"error": "invalid_grant", ...}), if that is its shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return None


def _classify_refresh_error(exc: auth_exceptions.RefreshError) -> GmailError:
    body = exc.args[1] if len(exc.args) > 1 else None
    code = oauth_error_code(body)
    if code is None and exc.args and isinstance(exc.args[0], str):
        # google-auth puts "<error>: <description>" first; a bare string body is all we get sometimes.
        code = exc.args[0].split(":", 1)[0].strip() or None
    summary = f"Google refused the refresh: {code or 'unknown error'}"
    if code in PERMANENT_OAUTH_ERRORS:
        return PermanentAuthFailure(summary, status=400, reason=code)
    if exc.retryable:
        return RetryableGmailError(summary, reason=code)
    return PermanentAuthFailure(summary, reason=code)


def _classify_http_error(exc: HttpError, *, now: dt.datetime) -> GmailError:
    status = int(exc.resp.status)
    body = _json_body(exc.content)
    code = oauth_error_code(body)
    message = exc.reason or ""
    reason = _first_reason(body)
    text = f"Gmail answered {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    if code in PERMANENT_OAUTH_ERRORS and status in (400, 401):
        return PermanentAuthFailure(f"Google refused the grant: {code}", status=status, reason=code)
    if status == 401:
        return AccessTokenRejected(text, status=status, reason=reason or code)
    if status == 404:
        return GmailNotFound(text, status=status, reason=reason)
    retry_at = _retry_at(exc, message, now=now)
    if status == 429 and _MAIL_SENDING in message:
        return SendingLimitReached(text, status=status, retry_at=retry_at)
    if status == 429 or status >= 500 or status == 408:
        return RetryableGmailError(text, status=status, reason=reason, retry_at=retry_at)
    if status == 403 and reason in _RATE_LIMIT_REASONS:
        return RetryableGmailError(text, status=status, reason=reason, retry_at=retry_at)
    if status == 403 and reason in _AUTH_403_REASONS:
        return PermanentAuthFailure(text, status=status, reason=reason)
    return PermanentGmailError(text, status=status, reason=reason or code)


def _json_body(content: bytes) -> Any:
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _first_reason(body: Any) -> str | None:
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    errors = body["error"].get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = errors[0].get("reason")
        return str(reason) if reason else None
    return None


def _retry_at(exc: HttpError, message: str, *, now: dt.datetime) -> dt.datetime | None:
    """When Google asked us to retry: the "Retry after <RFC 3339>" text wins over the Retry-After header."""
    found = _RETRY_AFTER_TIME.search(message)
    if found:
        return dt.datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))
    header = exc.resp.get("retry-after") if hasattr(exc.resp, "get") else None
    if not header:
        return None
    header = str(header).strip()
    if header.isdigit():
        return now + dt.timedelta(seconds=int(header))
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
