"""The auth service's refusals as gRPC-facing domain errors (services.runtime.errors maps them to a status with an
ErrorInfo reason): `as_domain_error` translates what the flows raise, so the servicer and the HTTP callback say
the same thing."""

from __future__ import annotations

from services.auth.access_tokens import RefreshBusy, UnknownMailbox
from services.auth.connections import ConnectionNotFound, NoRefreshToken
from services.auth.domain import (
    AuthDomainError,
    ConsentDenied,
    IllegalTransition,
    MissingScopes,
    ReconnectRequired,
    RedirectUriMismatch,
    StateRejected,
    UserSharedWithOtherLocations,
)
from services.runtime.errors import (
    DependencyUnavailable,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.runtime.gmail import GmailError, PermanentAuthFailure, RetryableGmailError


class ReauthRequired(FailedPrecondition):
    reason = "REAUTH_REQUIRED"


class OAuthStateRejected(InvalidArgument):
    reason = "OAUTH_STATE_REJECTED"


class ConsentNotGiven(FailedPrecondition):
    reason = "CONSENT_DENIED"


class ScopesNotGranted(FailedPrecondition):
    reason = "SCOPES_NOT_GRANTED"


class RedirectUriNotRegistered(FailedPrecondition):
    reason = "REDIRECT_URI_MISMATCH"


class RefreshTokenMissing(FailedPrecondition):
    reason = "NO_REFRESH_TOKEN"


class ConnectionStateConflict(FailedPrecondition):
    reason = "CONNECTION_STATE_CONFLICT"


class ConnectionMissing(NotFound):
    reason = "CONNECTION_NOT_FOUND"


class MailboxMissing(NotFound):
    reason = "MAILBOX_NOT_FOUND"


class UserMissing(NotFound):
    reason = "USER_NOT_FOUND"


class UserInOtherLocations(PermissionDenied):
    reason = "USER_IN_OTHER_LOCATIONS"


class GoogleRefused(FailedPrecondition):
    reason = "GOOGLE_REFUSED"


class GoogleUnavailable(DependencyUnavailable):
    reason = "GOOGLE_UNAVAILABLE"


def short_scope(scope: str) -> str:
    """'https://www.googleapis.com/auth/gmail.send' -> 'gmail.send', the name the consent page shows."""
    return scope.rsplit("/", 1)[-1] or scope


def as_domain_error(error: Exception) -> DomainError | None:
    """The client-facing error for what the auth flows raised (None: not a refusal the client can act on)."""
    if isinstance(error, DomainError):
        return error
    if isinstance(error, ReconnectRequired):
        return ReauthRequired(
            f"the Gmail grant of mailbox {error.mailbox_id} is no longer valid ({error.reason}): "
            "the user must connect Gmail again",
            mailbox_id=error.mailbox_id,
        )
    if isinstance(error, StateRejected):
        return OAuthStateRejected(f"{error}: start the connection again from the CRM", why=error.why)
    if isinstance(error, ConsentDenied):
        return ConsentNotGiven(
            f"Google did not grant access ({error.error}): connect again and press Continue",
            error=error.error,
        )
    if isinstance(error, MissingScopes):
        names = ", ".join(short_scope(s) for s in error.missing)
        return ScopesNotGranted(
            f"you unticked: {names} - please connect again and allow every permission",
            missing=" ".join(error.missing),
        )
    if isinstance(error, RedirectUriMismatch):
        return RedirectUriNotRegistered(str(error))
    if isinstance(error, NoRefreshToken):
        return RefreshTokenMissing(f"{error}: connect again and allow offline access")
    if isinstance(error, IllegalTransition):
        return ConnectionStateConflict(str(error), state=error.state.value)
    if isinstance(error, ConnectionNotFound):
        return ConnectionMissing(str(error), connection_id=error.connection_id)
    if isinstance(error, UnknownMailbox):
        return MailboxMissing(str(error), mailbox_id=error.mailbox_id)
    if isinstance(error, UserSharedWithOtherLocations):
        return UserInOtherLocations(str(error), user_id=error.user_id)
    if isinstance(error, RefreshBusy | RetryableGmailError):
        return GoogleUnavailable("Google did not answer in time: try again shortly")
    if isinstance(error, PermanentAuthFailure):
        return ReauthRequired(f"Google refused the grant ({error.reason or error.message}): connect again")
    if isinstance(error, GmailError):
        return GoogleRefused(f"Google refused the request: {error.message}")
    if isinstance(error, AuthDomainError):
        return FailedPrecondition(str(error))
    return None
