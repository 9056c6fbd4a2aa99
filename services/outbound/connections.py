"""The auth service as outbound's view of who sends: the user's connection in a location (its state, its mailbox,
the mailbox's own sending limit) and access tokens, over gRPC with an internal service token."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from services.outbound.domain.quota import AccountType
from services.outbound.domain.routing import require_connection_can_send
from services.runtime.access_token_cache import DEFAULT_MARGIN, AccessTokenCache, IssuedToken
from services.runtime.clock import Clock, SystemClock
from services.runtime.errors import DependencyUnavailable, FailedPrecondition, NotFound

# The mailbox's limit and Workspace flag change rarely; the connection itself is read on every send (R10).
_MAILBOX_CACHE = dt.timedelta(seconds=60)


class NoConnection(NotFound):
    """The user has never connected a mailbox in the location (or is not a user of it: the two look alike, so
    another location's user ids reveal nothing)."""

    reason = "NO_CONNECTION"


@dataclass(frozen=True)
class SenderMailbox:
    connection_id: str
    user_id: str
    location_id: str
    mailbox_id: str
    mailbox_email: str
    # The user's name for the From header (empty when the CRM gave none).
    display_name: str
    # By name, e.g. "CONNECTED" (services.outbound.domain.routing decides what may send).
    state: str
    # The mailbox's own limit (0: none set) and its account type as Google told auth (R14).
    daily_send_limit: int
    account_type: AccountType


_ACCOUNT_TYPES = {
    auth_pb2.ACCOUNT_TYPE_CONSUMER: AccountType.CONSUMER,
    auth_pb2.ACCOUNT_TYPE_WORKSPACE: AccountType.WORKSPACE,
}


def _state_name(state: int) -> str:
    return common_pb2.ConnectionState.Name(state).removeprefix("CONNECTION_STATE_")


def _unavailable(error: grpc.aio.AioRpcError, what: str) -> DependencyUnavailable:
    return DependencyUnavailable(f"auth {what} failed: {error.code().name}: {error.details()}")


class AuthConnections:
    """Connections, mailboxes and access tokens from the auth service (the caller owns the channel)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, clock: Clock | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._clock = clock or SystemClock()
        self._timeout = timeout_seconds
        # Gmail access tokens per mailbox; `tokens.forget(mailbox_id)` drops a refused one.
        self.tokens = AccessTokenCache(self._fetch_access_token, clock=self._clock)
        self._mailboxes: dict[str, tuple[auth_pb2.Mailbox, dt.datetime]] = {}
        self._lookups: dict[tuple[str, str], asyncio.Future[SenderMailbox]] = {}

    async def sender_for(self, location_id: str, user_id: str) -> SenderMailbox:
        """The user's connection in the location, refused (ConnectionNotActive, NoConnection) unless it may send."""
        sender = await self.mailbox_of(location_id, user_id)
        require_connection_can_send(
            connection_id=sender.connection_id, state=sender.state, mailbox_email=sender.mailbox_email
        )
        return sender

    async def mailbox_of(self, location_id: str, user_id: str) -> SenderMailbox:
        """The user's current connection in the location whatever its state (the newest one when none is active).

        Concurrent lookups of the same user and location share the one call in flight, so an answer is at most
        one round trip older than the request and is never kept beyond it (R10: a replaced mailbox stops at once).
        """
        key = (location_id, user_id)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(location_id, user_id))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        return await asyncio.shield(lookup)

    async def _look_up(self, location_id: str, user_id: str) -> SenderMailbox:
        try:
            answer = await self._stub.GetConnection(
                auth_pb2.GetConnectionRequest(location_id=location_id, user_id=user_id), timeout=self._timeout
            )
            connection = answer.connection
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise _unavailable(error, "GetConnection") from error
            connection = await self._latest_inactive(location_id, user_id)
        mailbox = await self._mailbox(connection.mailbox_id)
        return SenderMailbox(
            connection_id=connection.connection_id,
            user_id=connection.user_id,
            location_id=connection.location_id,
            mailbox_id=connection.mailbox_id,
            mailbox_email=connection.mailbox_email,
            display_name=connection.user_display_name,
            state=_state_name(connection.state),
            daily_send_limit=mailbox.daily_send_limit if mailbox is not None else 0,
            account_type=(
                _ACCOUNT_TYPES.get(mailbox.account_type, AccountType.UNKNOWN)
                if mailbox is not None
                else AccountType.UNKNOWN
            ),
        )

    async def _latest_inactive(self, location_id: str, user_id: str) -> auth_pb2.Connection:
        try:
            answer = await self._stub.ListConnections(
                auth_pb2.ListConnectionsRequest(location_id=location_id, user_id=user_id, page_size=100),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error, "ListConnections") from error
        if not answer.connections:
            raise NoConnection(
                f"user {user_id} has no Gmail connection in location {location_id}: connect a mailbox first",
                location_id=location_id,
                user_id=user_id,
            )
        return max(answer.connections, key=lambda c: c.state_change_time.ToDatetime())

    async def _mailbox(self, mailbox_id: str) -> auth_pb2.Mailbox | None:
        cached = self._mailboxes.get(mailbox_id)
        now = self._clock.now()
        if cached and cached[1] > now:
            return cached[0]
        try:
            answer = await self._stub.GetMailbox(
                auth_pb2.GetMailboxRequest(mailbox_id=mailbox_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _unavailable(error, "GetMailbox") from error
        self._mailboxes[mailbox_id] = (answer.mailbox, now + _MAILBOX_CACHE)
        return answer.mailbox

    async def access_token(self, mailbox_id: str) -> str:
        """A live access token for the mailbox; a refused grant is FAILED_PRECONDITION (the user must reconnect)."""
        return await self.tokens.token(mailbox_id)

    def forget_token(self, mailbox_id: str, rejected: str = "") -> None:
        """Drops a cached token Gmail refused (401); the next GetAccessToken names it, so auth refreshes the
        grant instead of returning it (a dead grant turns REAUTH_REQUIRED at once)."""
        self.tokens.refuse(mailbox_id, rejected)

    async def _fetch_access_token(self, mailbox_id: str, refused_token: str) -> IssuedToken:
        try:
            answer = await self._stub.GetAccessToken(
                auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id, rejected_access_token=refused_token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise FailedPrecondition(
                    f"the mailbox cannot be used: {error.details()}", mailbox_id=mailbox_id
                ) from error
            raise _unavailable(error, "GetAccessToken") from error
        expires = (
            answer.expire_time.ToDatetime(tzinfo=dt.UTC)
            if answer.HasField("expire_time")
            else self._clock.now() + DEFAULT_MARGIN * 2
        )
        return IssuedToken(answer.access_token, expires)
