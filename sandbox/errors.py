"""Errors in Google's JSON shape: one exception type that every route raises and one place that renders it."""

from __future__ import annotations

import json
from typing import Any

_STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class GoogleApiError(Exception):
    """A Google API error: HTTP code, `errors[0].reason`, message and domain, rendered as Google renders it."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        domain: str = "global",
        status: str | None = None,
        location: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.status = status or _STATUS_BY_CODE.get(code, "UNKNOWN")
        self.location = location
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"message": self.message, "domain": self.domain, "reason": self.reason}
        if self.location:
            detail["location"] = self.location
            detail["locationType"] = "header"
        return {
            "error": {"code": self.code, "message": self.message, "errors": [detail], "status": self.status}
        }

    def encoded(self) -> bytes:
        return json.dumps(self.body()).encode()


def not_found() -> GoogleApiError:
    return GoogleApiError(404, "notFound", "Requested entity was not found.")


def bad_request(message: str, reason: str = "badRequest") -> GoogleApiError:
    return GoogleApiError(400, reason, message)


def invalid_credentials() -> GoogleApiError:
    return GoogleApiError(
        401,
        "authError",
        "Invalid Credentials",
        location="Authorization",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def missing_credentials() -> GoogleApiError:
    return GoogleApiError(
        401,
        "required",
        "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
        "other valid authentication credential.",
        location="Authorization",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )


def insufficient_scopes() -> GoogleApiError:
    return GoogleApiError(
        403,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="insufficient_scope"'
        },
    )


def too_many_concurrent() -> GoogleApiError:
    return GoogleApiError(
        429, "rateLimitExceeded", "Too many concurrent requests for user.", domain="usageLimits"
    )


def user_rate_exceeded() -> GoogleApiError:
    return GoogleApiError(429, "rateLimitExceeded", "User-rate limit exceeded.", domain="usageLimits")


def user_rate_limit_403() -> GoogleApiError:
    return GoogleApiError(403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits")


def daily_limit_exceeded() -> GoogleApiError:
    return GoogleApiError(403, "dailyLimitExceeded", "Daily Limit Exceeded", domain="usageLimits")


def backend_error() -> GoogleApiError:
    return GoogleApiError(500, "backendError", "Backend Error")


def sending_limit(retry_after_iso: str) -> GoogleApiError:
    return GoogleApiError(
        429,
        "rateLimitExceeded",
        f"User-rate limit exceeded.  Retry after {retry_after_iso} (Mail sending)",
        domain="usageLimits",
    )
