"""The connect, update-email and disconnect flows of the auth service (R1, R3, R10, R11, R12): the domain decides,
the store records, the Gmail adapter talks to Google. Connection events are staged by a hook inside the same
transaction as the change (the transactional outbox lives with the caller)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.access_tokens import AccessTokens
from services.auth.account_type import account_type_of
from services.auth.crypto import SecretToken, TokenCipher
from services.auth.domain import (
    GOOGLE_AUTHORIZATION_ENDPOINT,
    STATE_TTL,
    AuthDomainError,
    Connection,
    ConnectionChange,
    ConnectOutcome,
    ConsentDenied,
    MissingScopes,
    OAuthState,
    ReconnectRequired,
    StateRejected,
    accept_state,
    authorization_url,
    begin_connect,
    check_granted_scopes,
    check_redirect_uri,
    plan_connect,
    plan_disconnect,
    state_digest,
)
from services.auth.store import (
    active_connection,
    connections_of_mailbox,
    consume_oauth_state,
    ensure_mailbox,
    find_oauth_state,
    forget_tokens,
    get_connection,
    get_mailbox,
    load_refresh_token,
    order_for_saving,
    record_watch,
    save_connections,
    save_oauth_state,
    store_grant,
)
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.gmail import (
    GmailApi,
    GmailClient,
    GmailError,
    OAuthClient,
    exchange_code,
    fixed_access_token,
    revoke_token,
)

log = logging.getLogger(__name__)

# Stages the connection events of `changes` (in the caller's outbox) within the transaction that made them.
ChangeHook = Callable[[AsyncSession, tuple[ConnectionChange, ...]], Awaitable[None]]


class ConnectionNotFound(AuthDomainError):
    def __init__(self, connection_id: str) -> None:
        super().__init__(f"no connection {connection_id}")
        self.connection_id = connection_id


class NoRefreshToken(AuthDomainError):
    """Google returned no refresh token for a mailbox we hold none for (consent was not forced)."""


@dataclass(frozen=True)
class StartedConnect:
    authorization_url: str
    state: str = field(repr=False)
    expires_at: dt.datetime


@dataclass(frozen=True)
class CompletedConnect:
    outcome: ConnectOutcome
    connection: Connection
    mailbox_email: str
    replaced_connection_id: str | None
    watch_expires_at: dt.datetime | None
    return_url: str = ""


@dataclass(frozen=True)
class Disconnected:
    connection: Connection
    # True when no other connection used the mailbox, so its watch was stopped and its grant revoked (R11).
    grant_revoked: bool


@dataclass
class ConnectionFlows:
    """BeginConnect / CompleteConnect / Disconnect (UpdateEmail is BeginConnect for a connected pair)."""

    db: Database
    cipher: TokenCipher
    api: GmailApi
    oauth_client: OAuthClient
    access_tokens: AccessTokens
    clock: Clock
    redirect_uri: str
    watch_topic: str
    registered_redirect_uris: Collection[str] = ()
    authorization_endpoint: str = GOOGLE_AUTHORIZATION_ENDPOINT
    state_ttl: dt.timedelta = STATE_TTL
    watch_label_ids: tuple[str, ...] = ()
    on_changes: ChangeHook | None = None
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)

    async def begin(
        self, *, user_id: str, location_id: str, login_hint: str | None = None, return_url: str = ""
    ) -> StartedConnect:
        flow = begin_connect(
            user_id=user_id,
            location_id=location_id,
            redirect_uri=self.redirect_uri,
            now=self.clock.now(),
            ttl=self.state_ttl,
            return_url=return_url,
        )
        async with self.db.write() as session:
            await save_oauth_state(session, flow.record)
        url = authorization_url(
            client_id=self.oauth_client.client_id,
            redirect_uri=flow.record.redirect_uri,
            state=flow.state,
            code_verifier=flow.record.code_verifier,
            endpoint=self.authorization_endpoint,
            login_hint=login_hint,
        )
        return StartedConnect(url, flow.state, flow.record.expires_at)

    async def complete(
        self, *, state: str, code: str = "", error: str = "", granted_scope: str | None = None
    ) -> CompletedConnect:
        """The OAuth callback. A forged, reused or expired state, a refusal, or a partial grant stores nothing
        but the spent state."""
        now = self.clock.now()
        digest = state_digest(state)
        async with self.db.write() as session:
            record = accept_state(await find_oauth_state(session, digest), state, now=now)
            if not await consume_oauth_state(session, record.digest, now=now):
                raise StateRejected("state already used")
        if error or not code:
            raise ConsentDenied(error or "no authorization code")
        check_redirect_uri(record.redirect_uri, self.registered_redirect_uris or [self.redirect_uri])
        if granted_scope is not None:
            check_granted_scopes(granted_scope)

        tokens = await exchange_code(
            self.api,
            self.oauth_client,
            code=code,
            redirect_uri=record.redirect_uri,
            code_verifier=record.code_verifier,
            now=now,
        )
        try:
            scopes = check_granted_scopes(tokens.scopes)
        except MissingScopes:
            await self._revoke_quietly(tokens.refresh_token or tokens.access_token)
            raise
        gmail = GmailClient(self.api, fixed_access_token(tokens.access_token))
        profile = await gmail.get_profile()

        async with self.db.write() as session:
            mailbox_id = await ensure_mailbox(
                session, profile.email_address, new_mailbox_id=self.new_id(), now=now
            )
            mailbox = await get_mailbox(session, mailbox_id)
            if tokens.refresh_token is None and (mailbox is None or not mailbox.has_refresh_token):
                raise NoRefreshToken(f"Google issued no refresh token for {profile.email_address}")
            await store_grant(
                session,
                self.cipher,
                mailbox_id,
                refresh_token=SecretToken(tokens.refresh_token) if tokens.refresh_token else None,
                access_token=SecretToken(tokens.access_token),
                access_token_expires_at=tokens.expiry,
                granted_scopes=scopes,
                account_type=account_type_of(tokens.id_token, profile.email_address),
            )

        watch_expires_at = await self._watch(gmail, mailbox_id)

        async with self.db.write() as session:
            current = await active_connection(session, record.user_id, record.location_id)
            known = {c.connection_id: c for c in await connections_of_mailbox(session, mailbox_id)}
            if current is not None:
                known[current.connection_id] = current
                for other in await connections_of_mailbox(session, current.mailbox_id):
                    known.setdefault(other.connection_id, other)
            plan = plan_connect(
                user_id=record.user_id,
                location_id=record.location_id,
                mailbox_id=mailbox_id,
                new_connection_id=self.new_id(),
                start_history_id=int(profile.history_id),
                now=now,
                known=list(known.values()),
            )
            await save_connections(session, order_for_saving(change.connection for change in plan.changes))
            if self.on_changes is not None and plan.changes:
                await self.on_changes(session, plan.changes)

        if plan.release_mailbox_id is not None:
            await self.release_mailbox(plan.release_mailbox_id)
        replaced = next(
            (c.connection.connection_id for c in plan.changes if c.connection.replaced_by_connection_id), None
        )
        return CompletedConnect(
            plan.outcome,
            plan.connection,
            profile.email_address,
            replaced,
            watch_expires_at,
            record.return_url,
        )

    async def pending_state(self, state: str) -> OAuthState | None:
        """The begun flow a state names, without spending it (None when unknown), e.g. to check its location."""
        async with self.db.read() as session:
            return await find_oauth_state(session, state_digest(state))

    async def disconnect(self, connection_id: str) -> Connection:
        """R11: ends the connection; stops the watch and revokes the grant when no other connection uses it."""
        return (await self.end(connection_id)).connection

    async def end(self, connection_id: str) -> Disconnected:
        """`disconnect`, also saying whether the mailbox was released (watch stopped, grant revoked)."""
        now = self.clock.now()
        async with self.db.write() as session:
            connection = await get_connection(session, connection_id)
            if connection is None:
                raise ConnectionNotFound(connection_id)
            plan = plan_disconnect(
                connection,
                now=now,
                mailbox_connections=await connections_of_mailbox(session, connection.mailbox_id),
            )
            await save_connections(session, [plan.change.connection])
            if self.on_changes is not None:
                await self.on_changes(session, (plan.change,))
        if plan.release_mailbox_id is not None:
            await self.release_mailbox(plan.release_mailbox_id)
        return Disconnected(plan.change.connection, grant_revoked=plan.release_mailbox_id is not None)

    async def release_mailbox(self, mailbox_id: str) -> None:
        """Stops the mailbox's watch and revokes its grant with Google, then forgets its tokens. Best effort on
        Google's side (a dead grant cannot be stopped or revoked, and that is fine); the tokens go regardless."""
        try:
            issued = await self.access_tokens.access_token(mailbox_id)
            await GmailClient(self.api, fixed_access_token(issued.token.reveal())).stop()
        except (GmailError, ReconnectRequired) as exc:
            log.warning("could not stop the watch of mailbox %s: %s", mailbox_id, type(exc).__name__)
        async with self.db.read() as session:
            refresh_token = await load_refresh_token(session, self.cipher, mailbox_id)
        if refresh_token is not None:
            await self._revoke_quietly(refresh_token.reveal())
        async with self.db.write() as session:
            await forget_tokens(session, mailbox_id)

    async def _watch(self, gmail: GmailClient, mailbox_id: str) -> dt.datetime | None:
        try:
            started = await gmail.watch(self.watch_topic, label_ids=self.watch_label_ids or None)
        except GmailError as exc:
            # The connection still works without push (ingest polls); renewal retries the watch.
            async with self.db.write() as session:
                await record_watch(
                    session, mailbox_id, expires_at=None, error=f"{type(exc).__name__}: {exc.message}"
                )
            return None
        async with self.db.write() as session:
            await record_watch(
                session, mailbox_id, expires_at=started.expiration, history_id=int(started.history_id)
            )
        return started.expiration

    async def _revoke_quietly(self, token: str) -> None:
        try:
            await revoke_token(self.api, self.oauth_client, token, now=self.clock.now())
        except GmailError as exc:
            log.warning("could not revoke a grant with Google: %s", type(exc).__name__)
