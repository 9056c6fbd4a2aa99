"""The auth service's pure rules: OAuth state and PKCE, the authorization URL and granted scopes, and the life of
a connection (R1, R3, R10, R11, R12). No I/O, no ORM, no protos, no asyncio: callers pass time and randomness."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import urlencode

RandomBytes = Callable[[int], bytes]

GOOGLE_AUTHORIZATION_ENDPOINT = "https://accounts.google.com/o/oauth2/v2/auth"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
GMAIL_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
MAIL_GOOGLE_COM = "https://mail.google.com/"
OPENID = "openid"
USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"

# The least that reads and sends (reference/gmail_api.md 5.4): gmail.readonly + gmail.send, plus identity.
REQUESTED_SCOPES: tuple[str, ...] = (OPENID, "email", GMAIL_READONLY, GMAIL_SEND)
# Each required capability, and the scopes that grant it (a broader earlier grant also counts, since
# include_granted_scopes merges it into this one).
REQUIRED_SCOPES: dict[str, frozenset[str]] = {
    GMAIL_READONLY: frozenset({GMAIL_READONLY, GMAIL_MODIFY, MAIL_GOOGLE_COM}),
    GMAIL_SEND: frozenset({GMAIL_SEND, GMAIL_COMPOSE, GMAIL_MODIFY, MAIL_GOOGLE_COM}),
}
STATE_TTL = dt.timedelta(minutes=10)
ACCESS_TOKEN_MARGIN = dt.timedelta(minutes=5)
# Gmail watches last 7 days and Google asks for a daily renewal: one is due once it has less than 6 days left.
WATCH_RENEWAL_MARGIN = dt.timedelta(days=6)


class AuthDomainError(Exception):
    """Base of the auth service's domain errors (mapped to gRPC status codes in one place)."""


class StateRejected(AuthDomainError):
    """The OAuth state is unknown (forged), already used, expired, or bound to another user or location."""

    def __init__(self, why: str) -> None:
        super().__init__(f"OAuth state rejected: {why}")
        self.why = why


class RedirectUriMismatch(AuthDomainError):
    """The redirect URI is not exactly one of the registered ones."""


class ConsentDenied(AuthDomainError):
    """Google sent an error instead of a code (the user pressed Cancel, or the consent failed)."""

    def __init__(self, error: str) -> None:
        super().__init__(f"Google did not grant access: {error}")
        self.error = error


class MissingScopes(AuthDomainError):
    """The user unticked permissions the product needs; the connection is not made."""

    def __init__(self, missing: Sequence[str]) -> None:
        names = ", ".join(missing)
        super().__init__(
            f"Gmail access was not fully granted: missing {names}. Connect again and leave every permission ticked."
        )
        self.missing = tuple(missing)


class IllegalTransition(AuthDomainError):
    def __init__(self, state: ConnectionState, action: ConnectionAction) -> None:
        super().__init__(f"a {state} connection cannot {action}")
        self.state = state
        self.action = action


class ReconnectRequired(AuthDomainError):
    """The mailbox's grant is dead (invalid_grant and friends); only the user reconnecting can fix it (R12)."""

    def __init__(self, mailbox_id: str, reason: str) -> None:
        super().__init__(f"mailbox {mailbox_id} must be reconnected: {reason}")
        self.mailbox_id = mailbox_id
        self.reason = reason


class UserSharedWithOtherLocations(AuthDomainError):
    """A caller scoped to some locations tried to change the name or address of a user who also belongs to
    locations it may not act for (users are global: the change would show in those locations too)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"user {user_id} also belongs to locations your token does not name: its name and CRM address can be "
            "changed only with a token for all of them (send them unchanged to change its membership of yours)"
        )
        self.user_id = user_id


# CRM users --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRecord:
    """A CRM user as stored: global (one per CRM user id), member of some locations, versioned by the CRM."""

    user_id: str
    crm_email: str
    display_name: str
    location_ids: tuple[str, ...]
    version: int

    def seen_by(self, scope: frozenset[str] | None) -> UserRecord:
        """The user as a caller scoped to `scope` may see it: only the memberships of its locations."""
        if scope is None:
            return self
        return replace(self, location_ids=tuple(loc for loc in self.location_ids if loc in scope))


@dataclass(frozen=True)
class UserUpsertPlan:
    """What an upsert does: `write` is the record to store (None: nothing changes)."""

    applied: bool
    write: UserRecord | None


def plan_user_upsert(
    stored: UserRecord | None, requested: UserRecord, scope: frozenset[str] | None
) -> UserUpsertPlan:
    """Decides an UpsertUser from a caller that may act for `scope` (None: every location).

    A caller changes only the memberships of locations it may act for; the others are kept. The name, address
    and version are global, so a scoped caller may change them only when the user belongs to no location outside
    its scope (otherwise it may still add or remove its own locations, sending the stored name and address,
    and the version is left alone so it cannot lock the CRM's later updates out). A request older than the
    stored version changes nothing (R: the CRM's version is monotonic).
    """
    if stored is None:
        return UserUpsertPlan(True, requested)
    foreign = () if scope is None else tuple(loc for loc in stored.location_ids if loc not in scope)
    if not foreign:
        if requested.version <= stored.version:
            return UserUpsertPlan(False, None)
        return UserUpsertPlan(True, requested)
    if (requested.crm_email, requested.display_name) != (stored.crm_email, stored.display_name):
        raise UserSharedWithOtherLocations(stored.user_id)
    if requested.version < stored.version:
        return UserUpsertPlan(False, None)
    memberships = tuple(sorted(set(foreign) | set(requested.location_ids)))
    return UserUpsertPlan(True, replace(stored, location_ids=memberships))


# OAuth state and PKCE ---------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def state_digest(state: str) -> str:
    """What is stored for a state: its SHA-256, so a read of the table cannot complete anyone's flow."""
    return hashlib.sha256(state.encode()).hexdigest()


def new_code_verifier(random_bytes: RandomBytes = secrets.token_bytes) -> str:
    """A PKCE code verifier: 43 characters of base64url over 32 random bytes (RFC 7636 section 4.1)."""
    return _b64url(random_bytes(32))


def code_challenge_s256(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)), the S256 challenge (RFC 7636 section 4.2)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class OAuthState:
    """One begun connect flow, bound to (user, location), with its PKCE verifier; single use, expiring."""

    digest: str
    user_id: str
    location_id: str
    redirect_uri: str
    code_verifier: str = field(repr=False)
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None
    # Where the callback page sends the browser afterwards (already checked against the allowed origins).
    return_url: str = ""


@dataclass(frozen=True)
class BegunConnect:
    """A new flow: `state` goes into the URL (never stored in clear), `record` is stored."""

    state: str = field(repr=False)
    record: OAuthState


def begin_connect(
    *,
    user_id: str,
    location_id: str,
    redirect_uri: str,
    now: dt.datetime,
    ttl: dt.timedelta = STATE_TTL,
    random_bytes: RandomBytes = secrets.token_bytes,
    return_url: str = "",
) -> BegunConnect:
    state = _b64url(random_bytes(32))
    record = OAuthState(
        digest=state_digest(state),
        user_id=user_id,
        location_id=location_id,
        redirect_uri=redirect_uri,
        code_verifier=new_code_verifier(random_bytes),
        created_at=now,
        expires_at=now + ttl,
        return_url=return_url,
    )
    return BegunConnect(state=state, record=record)


def accept_state(
    record: OAuthState | None,
    presented: str,
    *,
    now: dt.datetime,
    user_id: str | None = None,
    location_id: str | None = None,
) -> OAuthState:
    """Checks a state the browser brought back and returns the record marked used (store it before going on).

    `record` is what the store found for `state_digest(presented)`, or None. The digests are compared in
    constant time; when the caller knows the session's user or location, they must match the binding.
    """
    if record is None or not hmac.compare_digest(record.digest, state_digest(presented)):
        raise StateRejected("unknown state")
    if record.used_at is not None:
        raise StateRejected("state already used")
    if now >= record.expires_at:
        raise StateRejected("state expired")
    if user_id is not None and not hmac.compare_digest(user_id, record.user_id):
        raise StateRejected("state belongs to another user")
    if location_id is not None and not hmac.compare_digest(location_id, record.location_id):
        raise StateRejected("state belongs to another location")
    return replace(record, used_at=now)


# Authorization URL, redirect URI and scopes ------------------------------------------------------------------


def authorization_url(
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_verifier: str,
    endpoint: str = GOOGLE_AUTHORIZATION_ENDPOINT,
    scopes: Sequence[str] = REQUESTED_SCOPES,
    login_hint: str | None = None,
) -> str:
    """Google's consent URL: offline access with a forced consent (so a refresh token always comes back),
    incremental scopes, PKCE S256."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "code_challenge": code_challenge_s256(code_verifier),
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + urlencode(params)


def check_redirect_uri(presented: str, registered: Collection[str]) -> str:
    """Exact string match against the registered URIs (RFC 9700): no prefix, case or trailing-slash leniency."""
    if not any(hmac.compare_digest(presented.encode(), uri.encode()) for uri in registered):
        raise RedirectUriMismatch(f"redirect URI {presented!r} is not registered")
    return presented


def parse_scopes(granted: str | Iterable[str]) -> frozenset[str]:
    """The `scope` value of a token response or callback (space separated) as a set."""
    items = granted.split() if isinstance(granted, str) else granted
    return frozenset(item.strip() for item in items if item.strip())


def check_granted_scopes(granted: str | Iterable[str]) -> frozenset[str]:
    """Raises MissingScopes naming every required scope the user did not grant."""
    scopes = parse_scopes(granted)
    missing = [needed for needed, satisfied_by in REQUIRED_SCOPES.items() if not scopes & satisfied_by]
    if missing:
        raise MissingScopes(missing)
    return scopes


CONSUMER_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def is_workspace_address(email: str) -> bool:
    """Whether a Gmail mailbox is a Google Workspace one (its own domain), which has higher sending limits."""
    return email.rpartition("@")[2].strip().lower() not in CONSUMER_GMAIL_DOMAINS


def access_token_needs_refresh(
    expiry: dt.datetime | None, *, now: dt.datetime, margin: dt.timedelta = ACCESS_TOKEN_MARGIN
) -> bool:
    """True when there is no access token or it expires within `margin` (so callers never get one that dies
    in flight)."""
    return expiry is None or expiry - margin <= now


def watch_renewal_due(
    expires_at: dt.datetime | None, *, now: dt.datetime, margin: dt.timedelta = WATCH_RENEWAL_MARGIN
) -> bool:
    """True when the mailbox has no watch or it ends within `margin`."""
    return expires_at is None or expires_at - margin <= now


# Connections ------------------------------------------------------------------------------------------------


class ConnectionState(StrEnum):
    CONNECTED = "CONNECTED"
    REAUTH_REQUIRED = "REAUTH_REQUIRED"
    REPLACED = "REPLACED"
    DISCONNECTED = "DISCONNECTED"


ACTIVE_STATES = frozenset({ConnectionState.CONNECTED, ConnectionState.REAUTH_REQUIRED})


class ConnectionAction(StrEnum):
    REQUIRE_REAUTH = "require reauthentication"
    REAUTHORIZE = "be reauthorized"
    REPLACE = "be replaced"
    DISCONNECT = "be disconnected"


class ConnectionEventKind(StrEnum):
    CONNECTED = "CONNECTED"
    REPLACED = "REPLACED"
    DISCONNECTED = "DISCONNECTED"
    REAUTH_REQUIRED = "REAUTH_REQUIRED"
    REAUTHORIZED = "REAUTHORIZED"


# The only legal moves; REPLACED and DISCONNECTED are final (a later connect makes a new connection).
TRANSITIONS: dict[tuple[ConnectionState, ConnectionAction], tuple[ConnectionState, ConnectionEventKind]] = {
    (ConnectionState.CONNECTED, ConnectionAction.REQUIRE_REAUTH): (
        ConnectionState.REAUTH_REQUIRED,
        ConnectionEventKind.REAUTH_REQUIRED,
    ),
    (ConnectionState.REAUTH_REQUIRED, ConnectionAction.REAUTHORIZE): (
        ConnectionState.CONNECTED,
        ConnectionEventKind.REAUTHORIZED,
    ),
    (ConnectionState.CONNECTED, ConnectionAction.REPLACE): (
        ConnectionState.REPLACED,
        ConnectionEventKind.REPLACED,
    ),
    (ConnectionState.REAUTH_REQUIRED, ConnectionAction.REPLACE): (
        ConnectionState.REPLACED,
        ConnectionEventKind.REPLACED,
    ),
    (ConnectionState.CONNECTED, ConnectionAction.DISCONNECT): (
        ConnectionState.DISCONNECTED,
        ConnectionEventKind.DISCONNECTED,
    ),
    (ConnectionState.REAUTH_REQUIRED, ConnectionAction.DISCONNECT): (
        ConnectionState.DISCONNECTED,
        ConnectionEventKind.DISCONNECTED,
    ),
}


@dataclass(frozen=True)
class Connection:
    """A (user, location) -> mailbox connection with its own start point (R1)."""

    connection_id: str
    user_id: str
    location_id: str
    mailbox_id: str
    state: ConnectionState
    start_history_id: int
    start_time: dt.datetime
    state_change_time: dt.datetime
    replaced_by_connection_id: str | None = None
    last_error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class ConnectionChange:
    """A connection after a change, and the event that announces it."""

    connection: Connection
    event: ConnectionEventKind


def transition(
    connection: Connection,
    action: ConnectionAction,
    *,
    now: dt.datetime,
    reason: str | None = None,
    replaced_by_connection_id: str | None = None,
) -> ConnectionChange:
    try:
        state, event = TRANSITIONS[(connection.state, action)]
    except KeyError:
        raise IllegalTransition(connection.state, action) from None
    changed = replace(
        connection,
        state=state,
        state_change_time=now,
        last_error=reason if action is ConnectionAction.REQUIRE_REAUTH else None,
        replaced_by_connection_id=replaced_by_connection_id or connection.replaced_by_connection_id,
    )
    return ConnectionChange(changed, event)


def mailbox_used_by_others(
    mailbox_id: str, connections: Iterable[Connection], *, ending: Iterable[str]
) -> bool:
    """Whether an active connection other than the `ending` ones still uses the mailbox (R10, R11: only when
    none does are the watch stopped and the grant revoked)."""
    ending_ids = set(ending)
    return any(
        c.mailbox_id == mailbox_id and c.active and c.connection_id not in ending_ids for c in connections
    )


class ConnectOutcome(StrEnum):
    NEW = "NEW"  # no active connection for the (user, location)
    SAME_MAILBOX = "SAME_MAILBOX"  # the (user, location) was already connected to this mailbox
    UPDATE_EMAIL = "UPDATE_EMAIL"  # the (user, location) moves to another mailbox (R10)


@dataclass(frozen=True)
class ConnectPlan:
    """What completing a connect changes: the active connection afterwards, every changed connection with its
    event (in publishing order), and the old mailbox to release (stop watch, revoke) if no one else uses it."""

    outcome: ConnectOutcome
    connection: Connection
    changes: tuple[ConnectionChange, ...]
    release_mailbox_id: str | None


def plan_connect(
    *,
    user_id: str,
    location_id: str,
    mailbox_id: str,
    new_connection_id: str,
    start_history_id: int,
    now: dt.datetime,
    known: Sequence[Connection],
) -> ConnectPlan:
    """Completing a connect of `mailbox_id` for (user, location).

    `known` must hold the connections of the (user, location) and of every mailbox involved (the new one and
    the one it replaces). A fresh grant for a mailbox revives all of its REAUTH_REQUIRED connections, which
    keep their start points so ingest resumes from its cursor (R12). Connecting the same mailbox again keeps
    the connection; a different mailbox replaces it (R10). A new connection starts at `start_history_id` and
    `now` (R1), so the same mailbox connected later in another location starts later (R3).
    """
    current = next(
        (c for c in known if c.user_id == user_id and c.location_id == location_id and c.active), None
    )
    changes: list[ConnectionChange] = []
    for other in known:
        if other.mailbox_id == mailbox_id and other.state is ConnectionState.REAUTH_REQUIRED:
            changes.append(transition(other, ConnectionAction.REAUTHORIZE, now=now))

    if current is not None and current.mailbox_id == mailbox_id:
        active = next(
            (
                change.connection
                for change in changes
                if change.connection.connection_id == current.connection_id
            ),
            current,
        )
        return ConnectPlan(ConnectOutcome.SAME_MAILBOX, active, tuple(changes), None)

    created = Connection(
        connection_id=new_connection_id,
        user_id=user_id,
        location_id=location_id,
        mailbox_id=mailbox_id,
        state=ConnectionState.CONNECTED,
        start_history_id=start_history_id,
        start_time=now,
        state_change_time=now,
    )
    changes.append(ConnectionChange(created, ConnectionEventKind.CONNECTED))
    if current is None:
        return ConnectPlan(ConnectOutcome.NEW, created, tuple(changes), None)

    changes.append(
        transition(current, ConnectionAction.REPLACE, now=now, replaced_by_connection_id=new_connection_id)
    )
    still_used = mailbox_used_by_others(current.mailbox_id, known, ending=[current.connection_id])
    return ConnectPlan(
        ConnectOutcome.UPDATE_EMAIL, created, tuple(changes), None if still_used else current.mailbox_id
    )


@dataclass(frozen=True)
class DisconnectPlan:
    change: ConnectionChange
    release_mailbox_id: str | None


def plan_disconnect(
    connection: Connection, *, now: dt.datetime, mailbox_connections: Sequence[Connection]
) -> DisconnectPlan:
    """R11: the connection ends; the mailbox is released only when no other active connection uses it."""
    change = transition(connection, ConnectionAction.DISCONNECT, now=now)
    still_used = mailbox_used_by_others(
        connection.mailbox_id, mailbox_connections, ending=[connection.connection_id]
    )
    return DisconnectPlan(change, None if still_used else connection.mailbox_id)


def plan_reauth_required(
    mailbox_connections: Sequence[Connection], *, now: dt.datetime, reason: str
) -> tuple[ConnectionChange, ...]:
    """R12: Google refused the mailbox's grant, so each of its CONNECTED connections needs the user again
    (already-waiting ones are left alone: one event per connection, no storm)."""
    return tuple(
        transition(c, ConnectionAction.REQUIRE_REAUTH, now=now, reason=reason)
        for c in mailbox_connections
        if c.state is ConnectionState.CONNECTED
    )
