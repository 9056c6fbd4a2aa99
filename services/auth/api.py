"""The AuthService gRPC servicer: proto in, one domain call, proto out. Refusals leave as domain errors (mapped to
status + ErrorInfo by the runtime's interceptor); location scoping of `location_id` requests is the runtime's too,
and the few requests that carry locations elsewhere check them here with the same rule."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc
from services.auth.access_tokens import AccessTokens
from services.auth.connections import ConnectionFlows, StartedConnect
from services.auth.domain import Connection, UserRecord
from services.auth.errors import ConnectionMissing, MailboxMissing, UserMissing, as_domain_error
from services.auth.proto_codec import (
    STATE_FROM_PROTO,
    connection_proto,
    mailbox_proto,
    user_proto,
    user_record,
)
from services.auth.store import (
    active_connection,
    connection_view,
    connections_of_mailbox,
    find_mailbox_by_email,
    get_connection,
    get_mailbox,
    get_user,
    list_connections,
    list_users,
    upsert_user,
)
from services.auth.watches import WatchRenewal, WatchStatus
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.runtime.grpc_auth import ALL_LOCATIONS, current_caller
from services.runtime.protobuf_time import optional_timestamp
from services.runtime.validation import decode_page_token, encode_page_token, required
from services.runtime.validation import page_size as bounded_page_size

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
# Methods only other mailsync services may call (the runtime refuses them to outside callers).
INTERNAL_METHODS = frozenset({"GetAccessToken", "GetMailbox"})

_WATCH_OUTCOMES = {
    "RENEWED": auth_pb2.WATCH_RENEWAL_OUTCOME_RENEWED,
    "NOT_DUE": auth_pb2.WATCH_RENEWAL_OUTCOME_NOT_DUE,
    "FAILED": auth_pb2.WATCH_RENEWAL_OUTCOME_FAILED,
    "REAUTH_REQUIRED": auth_pb2.WATCH_RENEWAL_OUTCOME_REAUTH_REQUIRED,
}


class ReturnUrlNotAllowed(InvalidArgument):
    reason = "RETURN_URL_NOT_ALLOWED"


class NothingToUpdate(FailedPrecondition):
    reason = "NOT_CONNECTED"


class StateOfAnotherLocation(PermissionDenied):
    reason = "LOCATION_NOT_PERMITTED"


class AllLocationsRequired(PermissionDenied):
    reason = "ALL_LOCATIONS_REQUIRED"


require = required


def page_size(requested: int) -> int:
    return bounded_page_size(requested, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def after_id(token: str) -> str | None:
    """The id a page token continues after (None: the first page)."""
    decoded = decode_page_token(token, parts=1)
    return decoded[0] if decoded else None


def page_token_after(last_id: str) -> str:
    return encode_page_token([last_id])


def visible_user(user: UserRecord) -> auth_pb2.User:
    """The user as the caller may see it: only the memberships of locations its token names."""
    return user_proto(user.seen_by(current_caller().scope))


def check_return_url(url: str, allowed_origins: Collection[str]) -> str:
    """Only an exact origin from the configuration may receive the browser afterwards (no open redirect)."""
    if not url:
        return ""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.scheme not in ("http", "https") or origin not in {
        o.rstrip("/").lower() for o in allowed_origins
    }:
        raise ReturnUrlNotAllowed(
            f"return_url origin {origin!r} is not allowed: use one of the configured CRM origins or leave it empty",
            field="return_url",
        )
    return url


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Raises what the flows refused as the matching gRPC-facing domain error."""
    try:
        yield
    except Exception as error:
        mapped = as_domain_error(error)
        if mapped is None or mapped is error:
            raise
        raise mapped from error


@dataclass
class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    db: Database
    flows: ConnectionFlows
    access_tokens: AccessTokens
    watch_renewal: WatchRenewal
    clock: Clock
    return_url_origins: Collection[str] = ()

    # Users --------------------------------------------------------------------------------------------------

    async def UpsertUser(
        self, request: auth_pb2.UpsertUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.UpsertUserResponse:
        user = request.user
        require(user.user_id, "user.user_id", "set the CRM user id")
        require(user.crm_email, "user.crm_email", "set the user's CRM email address")
        if not user.location_ids:
            raise InvalidArgument("user.location_ids is required: list the user's locations", field="user")
        caller = current_caller()
        for location_id in user.location_ids:
            caller.require_location(location_id)
        async with translated_errors(), self.db.write() as session:
            applied = await upsert_user(session, user_record(user), now=self.clock.now(), scope=caller.scope)
            stored = await get_user(session, user.user_id)
        assert stored is not None
        return auth_pb2.UpsertUserResponse(user=visible_user(stored), applied=applied)

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListUsersResponse:
        location_id = require(request.location_id, "location_id", "name the location whose users to list")
        limit = page_size(request.page_size)
        async with self.db.read() as session:
            users = await list_users(
                session,
                location_id,
                email=request.email or None,
                limit=limit + 1,
                after_user_id=after_id(request.page_token),
            )
        more = len(users) > limit
        users = users[:limit]
        return auth_pb2.ListUsersResponse(
            users=[visible_user(u) for u in users],
            next_page_token=page_token_after(users[-1].user_id) if more else "",
        )

    # Connect ------------------------------------------------------------------------------------------------

    async def BeginConnect(
        self, request: auth_pb2.BeginConnectRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.BeginConnectResponse:
        started = await self._begin(request.user_id, request.location_id, request.return_url, updating=False)
        return auth_pb2.BeginConnectResponse(
            authorization_url=started.authorization_url,
            state=started.state,
            expire_time=optional_timestamp(started.expires_at),
        )

    async def UpdateEmail(
        self, request: auth_pb2.UpdateEmailRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.UpdateEmailResponse:
        started = await self._begin(request.user_id, request.location_id, request.return_url, updating=True)
        return auth_pb2.UpdateEmailResponse(
            authorization_url=started.authorization_url,
            state=started.state,
            expire_time=optional_timestamp(started.expires_at),
        )

    async def _begin(
        self, user_id: str, location_id: str, return_url: str, *, updating: bool
    ) -> StartedConnect:
        user_id = require(user_id, "user_id", "name the CRM user who connects Gmail")
        location_id = require(location_id, "location_id", "name the location the connection is for")
        return_url = check_return_url(return_url, self.return_url_origins)
        async with self.db.read() as session:
            user = await get_user(session, user_id)
            current = await active_connection(session, user_id, location_id)
        # A user of other locations only is as unknown here as no user at all: ids reveal nothing across them.
        if user is None or location_id not in user.location_ids:
            raise UserMissing(
                f"no user {user_id} in location {location_id}: upsert the user with this location first "
                "(UpsertUser)",
                user_id=user_id,
                location_id=location_id,
            )
        if updating and current is None:
            raise NothingToUpdate(
                f"user {user_id} has no Gmail connection in location {location_id}: use BeginConnect",
                user_id=user_id,
                location_id=location_id,
            )
        return await self.flows.begin(user_id=user_id, location_id=location_id, return_url=return_url)

    async def CompleteConnect(
        self, request: auth_pb2.CompleteConnectRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CompleteConnectResponse:
        state = require(request.state, "state", "pass the state Google redirected with")
        pending = await self.flows.pending_state(state)
        if pending is not None and not current_caller().may_access(pending.location_id):
            # Not LocationNotPermitted: that would name the location, which the caller did not send.
            raise StateOfAnotherLocation(
                "this OAuth state is for a location your token does not name: complete it with that location's token"
            )
        async with translated_errors():
            completed = await self.flows.complete(
                state=state,
                code=request.code,
                error=request.error,
                granted_scope=request.scope or None,
            )
        return auth_pb2.CompleteConnectResponse(
            connection=await self._connection_proto(completed.connection),
            replaced_connection_id=completed.replaced_connection_id or "",
        )

    # Connections --------------------------------------------------------------------------------------------

    async def GetConnection(
        self, request: auth_pb2.GetConnectionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetConnectionResponse:
        location_id = _require_connection_name(request.location_id, request.connection_id, request.user_id)
        async with self.db.read() as session:
            view = await connection_view(
                session,
                connection_id=request.connection_id or None,
                user_id=request.user_id or None,
                location_id=location_id,
            )
        if view is None or view.connection.location_id != location_id:
            raise _connection_missing(location_id, request.connection_id, request.user_id)
        connection = connection_proto(view.connection, view.mailbox)
        connection.user_display_name = view.user_display_name
        return auth_pb2.GetConnectionResponse(connection=connection)

    async def ListConnections(
        self, request: auth_pb2.ListConnectionsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListConnectionsResponse:
        location_id = require(
            request.location_id, "location_id", "name the location whose connections to list"
        )
        limit = page_size(request.page_size)
        async with self.db.read() as session:
            found = await list_connections(
                session,
                location_id,
                user_id=request.user_id or None,
                state=STATE_FROM_PROTO.get(request.state),
                limit=limit + 1,
                after_connection_id=after_id(request.page_token),
            )
        more = len(found) > limit
        found = found[:limit]
        return auth_pb2.ListConnectionsResponse(
            connections=[await self._connection_proto(c) for c in found],
            next_page_token=page_token_after(found[-1].connection_id) if more else "",
        )

    async def Disconnect(
        self, request: auth_pb2.DisconnectRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.DisconnectResponse:
        connection = await self._find_connection(request.location_id, request.connection_id, request.user_id)
        async with translated_errors():
            ended = await self.flows.end(connection.connection_id)
        return auth_pb2.DisconnectResponse(
            connection=await self._connection_proto(ended.connection), grant_revoked=ended.grant_revoked
        )

    async def _find_connection(self, location_id: str, connection_id: str, user_id: str) -> Connection:
        location_id = _require_connection_name(location_id, connection_id, user_id)
        async with self.db.read() as session:
            if connection_id:
                connection = await get_connection(session, connection_id)
            else:
                connection = await active_connection(session, user_id, location_id)
        if connection is None or connection.location_id != location_id:
            raise _connection_missing(location_id, connection_id, user_id)
        return connection

    async def _connection_proto(self, connection: Connection) -> auth_pb2.Connection:
        async with self.db.read() as session:
            mailbox = await get_mailbox(session, connection.mailbox_id)
            user = await get_user(session, connection.user_id)
        return connection_proto(connection, mailbox, user)

    # Internal: tokens and mailboxes -------------------------------------------------------------------------

    async def GetAccessToken(
        self, request: auth_pb2.GetAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetAccessTokenResponse:
        mailbox_id = require(
            request.mailbox_id, "mailbox_id", "name the mailbox (GetMailbox finds it by address)"
        )
        async with translated_errors():
            issued = await self.access_tokens.access_token(mailbox_id, request.rejected_access_token)
        async with self.db.read() as session:
            mailbox = await get_mailbox(session, mailbox_id)
        return auth_pb2.GetAccessTokenResponse(
            access_token=issued.token.reveal(),
            expire_time=optional_timestamp(issued.expires_at),
            mailbox_email=mailbox.email if mailbox else "",
            scopes=sorted(mailbox.granted_scopes) if mailbox else [],
        )

    async def GetMailbox(
        self, request: auth_pb2.GetMailboxRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetMailboxResponse:
        if not request.mailbox_id and not request.email:
            raise InvalidArgument(
                "mailbox_id or email is required: name the mailbox by id or by its Gmail address",
                field="mailbox_id",
            )
        async with self.db.read() as session:
            if request.mailbox_id:
                mailbox = await get_mailbox(session, request.mailbox_id)
            else:
                mailbox = await find_mailbox_by_email(session, request.email)
            connections = await connections_of_mailbox(session, mailbox.mailbox_id) if mailbox else []
        if mailbox is None:
            raise MailboxMissing(
                f"no mailbox {request.mailbox_id or request.email}",
                mailbox_id=request.mailbox_id,
                email=request.email,
            )
        return auth_pb2.GetMailboxResponse(mailbox=mailbox_proto(mailbox, connections))

    async def RenewWatches(
        self, request: auth_pb2.RenewWatchesRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RenewWatchesResponse:
        caller = current_caller()
        if not caller.internal and ALL_LOCATIONS not in caller.locations:
            raise AllLocationsRequired(
                "RenewWatches acts on every location's mailboxes: call it with an internal or all-locations token",
                caller=caller.name,
            )
        async with translated_errors():
            statuses = await self.watch_renewal.renew(list(request.mailbox_ids), force=request.force)
        return auth_pb2.RenewWatchesResponse(statuses=[watch_status_proto(s) for s in statuses])


def _require_connection_name(location_id: str, connection_id: str, user_id: str) -> str:
    """The location of a request that names a connection by id or by its user; InvalidArgument when it does not."""
    location_id = require(location_id, "location_id", "name the location of the connection")
    if not connection_id and not user_id:
        raise InvalidArgument(
            "connection_id or user_id is required: name the connection, or the user whose active "
            "connection in the location is meant",
            field="connection_id",
        )
    return location_id


def _connection_missing(location_id: str, connection_id: str, user_id: str) -> ConnectionMissing:
    # Another location's connection is reported as missing too, so ids reveal nothing across locations.
    return ConnectionMissing(
        f"no connection {connection_id or 'for user ' + user_id} in location {location_id}",
        location_id=location_id,
    )


def watch_status_proto(status: WatchStatus) -> auth_pb2.WatchStatus:
    return auth_pb2.WatchStatus(
        mailbox_id=status.mailbox_id,
        mailbox_email=status.mailbox_email,
        outcome=_WATCH_OUTCOMES[status.outcome.value],  # type: ignore[arg-type]
        watch_expire_time=optional_timestamp(status.watch_expires_at),
        error=status.error,
    )
