"""GetAccessToken's work: a valid access token for a mailbox, refreshed with margin, one refresh at a time per
mailbox within a process (a lock) and across replicas (the store's refresh lease); a permanent refusal from
Google marks the grant dead and the mailbox's connections REAUTH_REQUIRED once, and no refresh is tried again
until the user reconnects (R12: no retry storm)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.crypto import SecretToken, TokenCipher
from services.auth.domain import (
    ACCESS_TOKEN_MARGIN,
    ConnectionChange,
    ReconnectRequired,
    access_token_needs_refresh,
    plan_reauth_required,
)
from services.auth.store import (
    connections_of_mailbox,
    get_mailbox,
    load_access_token,
    load_refresh_token,
    mark_grant_failed,
    order_for_saving,
    release_refresh_lease,
    save_connections,
    store_refreshed_token,
    try_acquire_refresh_lease,
)
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.gmail import (
    GmailApi,
    OAuthClient,
    PermanentAuthFailure,
    RefreshedToken,
    RetryableGmailError,
    refresh_access_token,
)
from services.runtime.instruments import instruments

Refresher = Callable[[str], Awaitable[RefreshedToken]]
# Called inside the transaction that records a dead grant, so the connection events go through the outbox.
GrantFailureHook = Callable[[AsyncSession, str, tuple[ConnectionChange, ...], str], Awaitable[None]]


class UnknownMailbox(Exception):
    def __init__(self, mailbox_id: str) -> None:
        super().__init__(f"no mailbox {mailbox_id}")
        self.mailbox_id = mailbox_id


class RefreshBusy(RetryableGmailError):
    """Another replica holds the mailbox's refresh lease and did not finish in time: try again shortly."""


@dataclass(frozen=True)
class IssuedAccessToken:
    token: SecretToken
    expires_at: dt.datetime | None


@dataclass
class AccessTokens:
    """Hands out access tokens; the only user of refresh tokens."""

    db: Database
    cipher: TokenCipher
    api: GmailApi
    oauth_client: OAuthClient
    clock: Clock
    on_grant_failed: GrantFailureHook | None = None
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    margin: dt.timedelta = ACCESS_TOKEN_MARGIN
    lease_ttl: dt.timedelta = dt.timedelta(seconds=30)
    wait_step: float = 0.1
    wait_limit: float = 10.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    refresher: Refresher | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False, repr=False)

    async def access_token(self, mailbox_id: str, rejected: str = "") -> IssuedAccessToken:
        """A token valid for at least `margin`; raises ReconnectRequired once the grant is dead.

        `rejected` is a token Gmail refused: the stored token is not handed out again if it is that one (it was
        revoked or expired early, e.g. after a password change), so the grant is refreshed now, and a dead grant
        turns REAUTH_REQUIRED within the caller's next call instead of when the token would have expired.
        """
        issued = await self._usable_token(mailbox_id, rejected)
        if issued is not None:
            return issued
        lock = self._locks.setdefault(mailbox_id, asyncio.Lock())
        async with lock:
            waited = 0.0
            while True:
                issued = await self._usable_token(mailbox_id, rejected)
                if issued is not None:
                    return issued
                async with self.db.write() as session:
                    leased = await try_acquire_refresh_lease(
                        session, mailbox_id, self.owner, now=self.clock.now(), ttl=self.lease_ttl
                    )
                if leased:
                    return await self._refresh_holding_lease(mailbox_id, rejected)
                if waited >= self.wait_limit:
                    raise RefreshBusy(f"mailbox {mailbox_id} is being refreshed by another replica")
                await self.sleep(self.wait_step)
                waited += self.wait_step

    async def _usable_token(self, mailbox_id: str, rejected: str = "") -> IssuedAccessToken | None:
        async with self.db.read() as session:
            mailbox = await get_mailbox(session, mailbox_id)
            if mailbox is None:
                raise UnknownMailbox(mailbox_id)
            if mailbox.grant_failed_at is not None:
                raise ReconnectRequired(mailbox_id, mailbox.grant_failure or "grant refused by Google")
            stored = await load_access_token(session, self.cipher, mailbox_id)
        if stored is None or access_token_needs_refresh(
            stored.expires_at, now=self.clock.now(), margin=self.margin
        ):
            return None
        if rejected and hmac.compare_digest(stored.token.reveal().encode(), rejected.encode()):
            return None
        return IssuedAccessToken(stored.token, stored.expires_at)

    async def _refresh_holding_lease(self, mailbox_id: str, rejected: str = "") -> IssuedAccessToken:
        try:
            issued = await self._usable_token(mailbox_id, rejected)
            if issued is not None:
                return issued  # a replica refreshed between our read and our lease
            async with self.db.read() as session:
                refresh_token = await load_refresh_token(session, self.cipher, mailbox_id)
            if refresh_token is None:
                raise ReconnectRequired(mailbox_id, "no refresh token stored")
            try:
                fresh = await self._refresh(refresh_token)
            except PermanentAuthFailure as failure:
                await self._record_dead_grant(mailbox_id, failure.reason or "invalid_grant")
                raise ReconnectRequired(mailbox_id, failure.reason or "invalid_grant") from failure
            token = SecretToken(fresh.access_token)
            async with self.db.write() as session:
                await store_refreshed_token(
                    session,
                    self.cipher,
                    mailbox_id,
                    access_token=token,
                    expires_at=fresh.expiry,
                    rotated_refresh_token=SecretToken(fresh.refresh_token) if fresh.refresh_token else None,
                )
            return IssuedAccessToken(token, fresh.expiry)
        finally:
            async with self.db.write() as session:
                await release_refresh_lease(session, mailbox_id, self.owner)

    async def _refresh(self, refresh_token: SecretToken) -> RefreshedToken:
        outcome = "error"
        try:
            if self.refresher is not None:
                fresh = await self.refresher(refresh_token.reveal())
            else:
                fresh = await refresh_access_token(
                    self.api, self.oauth_client, refresh_token.reveal(), now=self.clock.now()
                )
            outcome = "ok"
            return fresh
        except PermanentAuthFailure:
            outcome = "reauth_required"
            raise
        finally:
            instruments().token_refreshes.add(1, {"mailsync.outcome": outcome})

    async def _record_dead_grant(self, mailbox_id: str, reason: str) -> None:
        now = self.clock.now()
        async with self.db.write() as session:
            if not await mark_grant_failed(session, mailbox_id, reason=reason, now=now):
                return
            changes = plan_reauth_required(
                await connections_of_mailbox(session, mailbox_id), now=now, reason=reason
            )
            await save_connections(session, order_for_saving(change.connection for change in changes))
            instruments().reauth_required.add(len(changes))
            if self.on_grant_failed is not None:
                await self.on_grant_failed(session, mailbox_id, changes, reason)
