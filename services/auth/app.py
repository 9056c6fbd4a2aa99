"""Composition root of the auth service: wires the database, NATS and gRPC servicers into one process.

`build(settings)` creates everything (nothing connects at import time) and returns the components that
`services.runtime.service` serves and later cleans up: the AuthService servicer, the OAuth callback listener
and the periodic watch renewal and token-key housekeeping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from pathlib import Path

from mailsync.v1 import auth_pb2, auth_pb2_grpc
from services.auth.access_tokens import AccessTokens
from services.auth.api import INTERNAL_METHODS, AuthServicer
from services.auth.connections import ConnectionFlows
from services.auth.crypto import KeyRing, TokenCipher, TokenKeyError
from services.auth.events import ConnectionEventStager
from services.auth.oauth_http import OAuthCallbackServer
from services.auth.settings import AuthSettings
from services.auth.store import delete_expired_oauth_states, rotate_token_keys
from services.auth.watches import WatchRenewal
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.gmail import GmailApi, GmailEndpoint, OAuthClient
from services.runtime.grpc_server import ServicerRegistration
from services.runtime.periodic import Periodic
from services.runtime.service import ServiceComponents, StartupError, open_foundation

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HOUSEKEEPING_INTERVAL = dt.timedelta(minutes=5)

log = logging.getLogger(__name__)


def token_cipher(settings: AuthSettings) -> TokenCipher:
    """The cipher for tokens at rest; StartupError naming the variable when the key ring is missing or bad."""
    specific, shared = settings.variable_names("token_keys")
    # The key ring belongs to the auth service alone, so its own variable is the one to name.
    variable = shared if shared in os.environ and specific not in os.environ else specific
    if not settings.token_keys.strip():
        raise StartupError(
            f"{variable} is not set: give the token encryption keys as 'v1:<base64url 32 bytes>' (generate one "
            "with: python -c 'from services.auth.crypto import generate_key_text; print(generate_key_text(1))')"
        )
    try:
        return TokenCipher(KeyRing.parse(settings.token_keys))
    except TokenKeyError as exc:
        raise StartupError(f"{variable}: {exc}") from None


def _labels(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


async def build(settings: AuthSettings, *, clock: Clock | None = None) -> ServiceComponents:
    """Opens and migrates the database, connects NATS, and registers the service's servicers and tasks."""
    cipher = token_cipher(settings)
    components = await open_foundation(settings, MIGRATIONS_DIR)
    try:
        await _wire(components, settings, cipher, clock or SystemClock())
    except BaseException:
        await _abandon(components)
        raise
    return components


async def _abandon(components: ServiceComponents) -> None:
    # The runtime releases only what started; a build that fails half-way gives back what it already opened.
    with contextlib.suppress(Exception):
        await components.nats.close()
    for cleanup in reversed(components.cleanups):
        with contextlib.suppress(Exception):
            await cleanup()


async def _wire(
    components: ServiceComponents, settings: AuthSettings, cipher: TokenCipher, clock: Clock
) -> None:
    db: Database = components.database
    api = GmailApi(
        GmailEndpoint(root_url=settings.gmail_root_url or None, max_workers=settings.gmail_max_workers)
    )
    components.add_cleanup(api.aclose)
    oauth_client = OAuthClient(
        settings.google_client_id,
        settings.google_client_secret,
        token_uri=settings.google_token_uri,
        revoke_uri=settings.google_revoke_uri,
    )
    events = ConnectionEventStager(clock)
    access_tokens = AccessTokens(
        db=db,
        cipher=cipher,
        api=api,
        oauth_client=oauth_client,
        clock=clock,
        on_grant_failed=events.on_grant_failed,
    )
    labels = _labels(settings.watch_label_ids)
    flows = ConnectionFlows(
        db=db,
        cipher=cipher,
        api=api,
        oauth_client=oauth_client,
        access_tokens=access_tokens,
        clock=clock,
        redirect_uri=settings.oauth_redirect_uri,
        watch_topic=settings.pubsub_topic,
        authorization_endpoint=settings.google_authorization_uri,
        state_ttl=dt.timedelta(seconds=settings.oauth_state_ttl_seconds),
        watch_label_ids=labels,
        on_changes=events.on_changes,
    )
    renewal = WatchRenewal(
        db=db,
        api=api,
        access_tokens=access_tokens,
        clock=clock,
        topic=settings.pubsub_topic,
        label_ids=labels,
    )
    callback = OAuthCallbackServer(
        flows, host=settings.http_host, port=settings.http_port, redirect_uri=settings.oauth_redirect_uri
    )
    try:
        await callback.start()
    except OSError as exc:
        await callback.close()
        raise StartupError(
            f"{settings.variable_for('http_port')}: cannot listen on {settings.http_host}:{settings.http_port}: "
            f"{exc.strerror or exc}"
        ) from None
    components.add_cleanup(callback.close)
    components.add_background("auth-oauth-callback", callback.run, callback.stop)

    async def renew_due_watches() -> None:
        await renewal.renew()

    async def housekeeping() -> None:
        await rotate_token_keys(db, cipher)
        async with db.write() as session:
            await delete_expired_oauth_states(session, now=clock.now() - dt.timedelta(days=1))

    watches = Periodic(
        "auth-watch-renewal", renew_due_watches, dt.timedelta(seconds=settings.watch_renewal_interval_seconds)
    )
    keeping = Periodic("auth-housekeeping", housekeeping, HOUSEKEEPING_INTERVAL)
    components.add_background(watches.name, watches.run, watches.stop)
    components.add_background(keeping.name, keeping.run, keeping.stop)

    servicer = AuthServicer(
        db=db,
        flows=flows,
        access_tokens=access_tokens,
        watch_renewal=renewal,
        clock=clock,
        return_url_origins=_labels(settings.return_url_origins),
    )
    components.add_servicer(
        ServicerRegistration(
            service=auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
            servicer=servicer,
            add_to_server=auth_pb2_grpc.add_AuthServiceServicer_to_server,
            internal_methods=INTERNAL_METHODS,
        )
    )
