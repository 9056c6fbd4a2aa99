"""The auth service as ingest's MailboxDirectory and AccessTokens: GetMailbox and GetAccessToken over gRPC with
an internal service token. Access tokens are cached until shortly before they expire (the cache outbound uses)."""

from __future__ import annotations

import datetime as dt

import grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc
from services.ingest.connection_proto import connection_from_proto
from services.ingest.mailboxes import MailboxInfo
from services.runtime.access_token_cache import DEFAULT_MARGIN, AccessTokenCache, IssuedToken
from services.runtime.clock import Clock, SystemClock
from services.runtime.gmail import PermanentAuthFailure, RetryableGmailError

_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def _auth_error(error: grpc.aio.AioRpcError, what: str) -> Exception:
    message = f"auth {what} failed: {error.code().name}: {error.details()}"
    if error.code() in _RETRYABLE_CODES:
        return RetryableGmailError(message)
    # FAILED_PRECONDITION (reconnect required), NOT_FOUND, PERMISSION_DENIED: nothing works until a person acts.
    return PermanentAuthFailure(message, reason=error.code().name)


class AuthServiceClient:
    """Both ports on one channel (the caller owns and closes the channel)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, clock: Clock | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._clock = clock or SystemClock()
        self._timeout = timeout_seconds
        self._tokens = AccessTokenCache(self._fetch_access_token, clock=self._clock)

    async def get_mailbox(
        self, *, mailbox_id: str = "", email: str = "", fresh: bool = False
    ) -> MailboxInfo | None:
        # Every answer is asked of auth: `fresh` changes nothing here.
        try:
            answer = await self._stub.GetMailbox(
                auth_pb2.GetMailboxRequest(mailbox_id=mailbox_id, email=email), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _auth_error(error, "GetMailbox") from error
        mailbox = answer.mailbox
        return MailboxInfo(
            mailbox_id=mailbox.mailbox_id,
            email=mailbox.email,
            connections=tuple(connection_from_proto(c) for c in mailbox.connections),
            account_type=mailbox.account_type,
        )

    async def access_token(self, mailbox_id: str) -> str:
        return await self._tokens.token(mailbox_id)

    async def _fetch_access_token(self, mailbox_id: str, refused_token: str) -> IssuedToken:
        try:
            answer = await self._stub.GetAccessToken(
                auth_pb2.GetAccessTokenRequest(mailbox_id=mailbox_id, rejected_access_token=refused_token),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _auth_error(error, "GetAccessToken") from error
        expires = (
            answer.expire_time.ToDatetime(tzinfo=dt.UTC)
            if answer.HasField("expire_time")
            else self._clock.now() + DEFAULT_MARGIN * 2
        )
        return IssuedToken(answer.access_token, expires)

    def drop_token(self, mailbox_id: str) -> None:
        """Drops the cached token without calling it refused (the mailbox's connection changed)."""
        self._tokens.forget(mailbox_id)

    def forget_token(self, mailbox_id: str, rejected: str = "") -> None:
        """Drops a cached token Gmail refused, so the next call asks auth again and names the refused token
        (`rejected`, else the one cached), which auth then refreshes instead of returning."""
        self._tokens.refuse(mailbox_id, rejected)
