"""The project's Gmail adapter: a classified, retrying, asyncio client over google-api-python-client, pointed at
Google or at the Gmail sandbox by configuration, authorised by access tokens from the auth service."""

from services.runtime.gmail.api import GOOGLE_ROOT_URL, GivenAccessToken, GmailApi, GmailEndpoint
from services.runtime.gmail.client import (
    MAX_SEND_BYTES,
    AccessTokenSource,
    GmailClient,
    HistoryListing,
    MessageBatch,
    Profile,
    WatchStarted,
    decode_base64url,
    fixed_access_token,
)
from services.runtime.gmail.credentials import (
    GOOGLE_REVOKE_URI,
    GOOGLE_TOKEN_URI,
    OAuthClient,
    RefreshedToken,
    refresh_access_token,
    refreshable_credentials,
)
from services.runtime.gmail.errors import (
    PERMANENT_OAUTH_ERRORS,
    AccessTokenRejected,
    GmailError,
    GmailNotFound,
    HistoryExpired,
    MessageTooLarge,
    PermanentAuthFailure,
    PermanentGmailError,
    RetryableGmailError,
    SendingLimitReached,
    SendOutcomeUnknown,
    classify,
)
from services.runtime.gmail.google_oauth import (
    AuthorizationCodeRejected,
    GrantedTokens,
    exchange_code,
    revoke_token,
)
from services.runtime.gmail.pacing import QuotaBudget, UserPacer, UserPacers
from services.runtime.gmail.retry import RetryPolicy, RetryTiming

__all__ = [
    "GOOGLE_REVOKE_URI",
    "GOOGLE_ROOT_URL",
    "GOOGLE_TOKEN_URI",
    "MAX_SEND_BYTES",
    "PERMANENT_OAUTH_ERRORS",
    "AccessTokenRejected",
    "AccessTokenSource",
    "AuthorizationCodeRejected",
    "GivenAccessToken",
    "GmailApi",
    "GmailClient",
    "GmailEndpoint",
    "GmailError",
    "GmailNotFound",
    "GrantedTokens",
    "HistoryExpired",
    "HistoryListing",
    "MessageBatch",
    "MessageTooLarge",
    "OAuthClient",
    "PermanentAuthFailure",
    "PermanentGmailError",
    "Profile",
    "QuotaBudget",
    "RefreshedToken",
    "RetryPolicy",
    "RetryTiming",
    "RetryableGmailError",
    "SendOutcomeUnknown",
    "SendingLimitReached",
    "UserPacer",
    "UserPacers",
    "WatchStarted",
    "classify",
    "decode_base64url",
    "exchange_code",
    "fixed_access_token",
    "refresh_access_token",
    "refreshable_credentials",
    "revoke_token",
]
