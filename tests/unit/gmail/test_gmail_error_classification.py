"""The Gmail adapter's error classification, case by case, on the exception objects the Google libraries raise."""

from __future__ import annotations

import datetime as dt
import json
import random

import httplib2
import pytest
from google.auth import exceptions as auth_exceptions
from google.oauth2 import _client as oauth_client
from googleapiclient.errors import HttpError

from services.runtime.clock import FrozenClock
from services.runtime.gmail import (
    AccessTokenRejected,
    GmailNotFound,
    PermanentAuthFailure,
    PermanentGmailError,
    RetryableGmailError,
    RetryPolicy,
    RetryTiming,
    SendingLimitReached,
    classify,
)

NOW = dt.datetime(2026, 11, 26, 20, 0, tzinfo=dt.UTC)


def gmail_error_body(code: int, reason: str, message: str, status: str) -> bytes:
    """A Google JSON error body as Gmail returns it (reference/gmail_api.md section 4.3)."""
    return json.dumps(
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": "usageLimits", "reason": reason}],
                "status": status,
            }
        }
    ).encode()


def http_error(status: int, content: bytes, headers: dict[str, str] | None = None) -> HttpError:
    response = httplib2.Response({"status": str(status), **(headers or {})})
    return HttpError(response, content, uri="https://gmail.googleapis.com/gmail/v1/users/me/profile?alt=json")


def refresh_error(body: dict[str, str], *, retryable: bool = False) -> auth_exceptions.RefreshError:
    """The RefreshError google-auth raises for a token endpoint error body (built by google-auth itself)."""
    with pytest.raises(auth_exceptions.RefreshError) as raised:
        oauth_client._handle_error_response(body, retryable)
    return raised.value


INVALID_GRANT = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}

CASES = [
    pytest.param(
        refresh_error(INVALID_GRANT), PermanentAuthFailure, "invalid_grant", id="refresh-invalid_grant"
    ),
    pytest.param(
        refresh_error({"error": "invalid_client", "error_description": "The OAuth client was not found."}),
        PermanentAuthFailure,
        "invalid_client",
        id="refresh-invalid_client",
    ),
    pytest.param(
        refresh_error({"error": "unauthorized_client", "error_description": "Unauthorized"}),
        PermanentAuthFailure,
        "unauthorized_client",
        id="refresh-unauthorized_client",
    ),
    pytest.param(
        refresh_error({"error": "admin_policy_enforced", "error_description": "blocked by admin"}),
        PermanentAuthFailure,
        "admin_policy_enforced",
        id="refresh-admin_policy_enforced",
    ),
    pytest.param(
        refresh_error({"error": "internal_failure", "error_description": "try again"}, retryable=True),
        RetryableGmailError,
        "internal_failure",
        id="refresh-retryable-server-error",
    ),
    pytest.param(
        http_error(400, json.dumps(INVALID_GRANT).encode()),
        PermanentAuthFailure,
        "invalid_grant",
        id="http-400-invalid_grant",
    ),
    pytest.param(
        http_error(401, json.dumps({"error": "invalid_grant", "error_description": "Bad Request"}).encode()),
        PermanentAuthFailure,
        "invalid_grant",
        id="http-401-invalid_grant",
    ),
    pytest.param(
        http_error(
            401,
            gmail_error_body(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                "UNAUTHENTICATED",
            ),
        ),
        AccessTokenRejected,
        "authError",
        id="http-401-authError",
    ),
    pytest.param(
        http_error(
            403,
            gmail_error_body(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
                "PERMISSION_DENIED",
            ),
        ),
        PermanentAuthFailure,
        "insufficientPermissions",
        id="http-403-insufficientPermissions",
    ),
    pytest.param(
        http_error(
            429,
            gmail_error_body(
                429, "rateLimitExceeded", "Too many concurrent requests for user", "RESOURCE_EXHAUSTED"
            ),
        ),
        RetryableGmailError,
        "rateLimitExceeded",
        id="http-429-concurrency",
    ),
    pytest.param(
        http_error(
            403,
            gmail_error_body(403, "userRateLimitExceeded", "User Rate Limit Exceeded", "PERMISSION_DENIED"),
        ),
        RetryableGmailError,
        "userRateLimitExceeded",
        id="http-403-userRateLimitExceeded",
    ),
    pytest.param(
        http_error(
            403, gmail_error_body(403, "rateLimitExceeded", "Rate Limit Exceeded", "PERMISSION_DENIED")
        ),
        RetryableGmailError,
        "rateLimitExceeded",
        id="http-403-rateLimitExceeded",
    ),
    pytest.param(
        http_error(
            403, gmail_error_body(403, "dailyLimitExceeded", "Daily Limit Exceeded", "PERMISSION_DENIED")
        ),
        PermanentGmailError,
        "dailyLimitExceeded",
        id="http-403-dailyLimitExceeded-is-not-retried",
    ),
    pytest.param(
        http_error(403, gmail_error_body(403, "forbidden", "Forbidden", "PERMISSION_DENIED")),
        PermanentGmailError,
        "forbidden",
        id="http-403-forbidden",
    ),
    pytest.param(
        http_error(500, gmail_error_body(500, "backendError", "Backend Error", "INTERNAL")),
        RetryableGmailError,
        "backendError",
        id="http-500-backendError",
    ),
    pytest.param(
        http_error(503, b"<html>Service Unavailable</html>"),
        RetryableGmailError,
        None,
        id="http-503-html-body",
    ),
    pytest.param(
        http_error(404, gmail_error_body(404, "notFound", "Requested entity was not found.", "NOT_FOUND")),
        GmailNotFound,
        "notFound",
        id="http-404-notFound",
    ),
    pytest.param(
        http_error(
            400,
            gmail_error_body(400, "failedPrecondition", "Precondition check failed.", "FAILED_PRECONDITION"),
        ),
        PermanentGmailError,
        "failedPrecondition",
        id="http-400-failedPrecondition",
    ),
    pytest.param(
        http_error(410, gmail_error_body(410, "resourceGone", "Gone", "NOT_FOUND")),
        PermanentGmailError,
        "resourceGone",
        id="http-410-resourceGone",
    ),
    pytest.param(httplib2.ServerNotFoundError("no such host"), RetryableGmailError, None, id="network-dns"),
    pytest.param(ConnectionResetError("reset by peer"), RetryableGmailError, None, id="network-reset"),
    pytest.param(TimeoutError("timed out"), RetryableGmailError, None, id="network-timeout"),
    pytest.param(
        auth_exceptions.TransportError("refused"), RetryableGmailError, None, id="token-endpoint-transport"
    ),
]


@pytest.mark.parametrize(("raised", "expected", "reason"), CASES)
def test_classification_table(raised: BaseException, expected: type, reason: str | None) -> None:
    classified = classify(raised, now=NOW)
    assert type(classified) is expected
    assert classified.reason == reason


def test_refresh_error_with_only_a_message_is_a_permanent_auth_failure() -> None:
    # google-auth raises this when credentials cannot refresh at all (no refresh token): nothing to retry.
    classified = classify(
        auth_exceptions.RefreshError("The credentials do not contain the necessary fields"), now=NOW
    )
    assert isinstance(classified, PermanentAuthFailure)


def test_mail_sending_limit_carries_gmails_retry_time() -> None:
    message = "User-rate limit exceeded.  Retry after 2026-11-27T09:00:00.000Z (Mail sending)"
    classified = classify(
        http_error(429, gmail_error_body(429, "rateLimitExceeded", message, "RESOURCE_EXHAUSTED")), now=NOW
    )
    assert isinstance(classified, SendingLimitReached)
    assert classified.retry_at == dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


def test_rate_limit_retry_time_from_the_message_is_honoured() -> None:
    message = "User-rate limit exceeded.  Retry after 2026-11-26T20:00:30Z"
    classified = classify(
        http_error(429, gmail_error_body(429, "rateLimitExceeded", message, "RESOURCE_EXHAUSTED")), now=NOW
    )
    assert isinstance(classified, RetryableGmailError)
    assert not isinstance(classified, SendingLimitReached)
    assert classified.retry_at == NOW + dt.timedelta(seconds=30)


def test_retry_after_header_in_seconds() -> None:
    error = http_error(
        429,
        gmail_error_body(429, "rateLimitExceeded", "Too many", "RESOURCE_EXHAUSTED"),
        {"retry-after": "7"},
    )
    classified = classify(error, now=NOW)
    assert isinstance(classified, RetryableGmailError)
    assert classified.retry_at == NOW + dt.timedelta(seconds=7)


def test_retry_after_header_as_http_date() -> None:
    error = http_error(503, b"", {"retry-after": "Thu, 26 Nov 2026 20:01:00 GMT"})
    classified = classify(error, now=NOW)
    assert isinstance(classified, RetryableGmailError)
    assert classified.retry_at == NOW + dt.timedelta(minutes=1)


def test_a_retryable_error_without_a_time_has_none() -> None:
    classified = classify(
        http_error(500, gmail_error_body(500, "backendError", "Backend Error", "INTERNAL")), now=NOW
    )
    assert isinstance(classified, RetryableGmailError)
    assert classified.retry_at is None


def test_classified_errors_never_contain_the_refresh_token() -> None:
    token = "1//0secret-refresh-token"
    raised = refresh_error({"error": "invalid_grant", "error_description": f"bad token {token}"})
    classified = classify(raised, now=NOW)
    assert token not in str(classified) and token not in repr(classified)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.5)
    timing = RetryTiming(clock=FrozenClock(NOW), rng=random.Random(7))
    delays = [timing.delay_for(policy, n, None) for n in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert delay is not None and ceiling <= delay <= ceiling * 1.5


def test_backoff_is_reproducible_with_a_seed() -> None:
    policy = RetryPolicy()
    first = [RetryTiming(rng=random.Random(3)).delay_for(policy, n, None) for n in range(4)]
    second = [RetryTiming(rng=random.Random(3)).delay_for(policy, n, None) for n in range(4)]
    other = [RetryTiming(rng=random.Random(4)).delay_for(policy, n, None) for n in range(4)]
    assert first == second
    assert first != other


def test_backoff_waits_at_least_until_googles_retry_time() -> None:
    timing = RetryTiming(clock=FrozenClock(NOW), rng=random.Random(1))
    delay = timing.delay_for(RetryPolicy(base_delay=1.0, max_wait=120), 0, NOW + dt.timedelta(seconds=45))
    assert delay == 45


def test_backoff_gives_up_when_google_asks_for_longer_than_the_policy_allows() -> None:
    timing = RetryTiming(clock=FrozenClock(NOW), rng=random.Random(1))
    assert timing.delay_for(RetryPolicy(max_wait=120), 0, NOW + dt.timedelta(hours=3)) is None
