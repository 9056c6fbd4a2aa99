"""Wires ingest's sync pipeline into the service process: the push endpoint (HTTP and gRPC), the sync workers on
the work stream, the connection-event consumer, the scheduler, and the auth service as directory and token source.

`add_sync_pipeline(components, settings)` is called by the composition root (`app.build`); what it opens, it also
registers for cleanup.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from services.ingest.api import IngestApi, ingest_registration
from services.ingest.auth_client import AuthServiceClient
from services.ingest.connection_events import ConnectionEventHandler
from services.ingest.drops_api import DropRpcs
from services.ingest.mailbox_cache import CachedMailboxes
from services.ingest.mailboxes import AccessTokens, MailboxDirectory
from services.ingest.normalizer import MessageNormalizer, NormalizerConfig
from services.ingest.push import PushAuthConfig, PushTokenVerifier
from services.ingest.push_http import PushHttpServer
from services.ingest.push_intake import PushIntake
from services.ingest.scheduler import SyncScheduler
from services.ingest.settings import IngestSettings
from services.ingest.sync import MailboxSyncer, PublishObserver, SyncConfig
from services.ingest.sync_policy import SyncTiming
from services.runtime import streams, subjects
from services.runtime.consumer import Consumer, ConsumerSpec
from services.runtime.gmail import GmailApi, GmailEndpoint, QuotaBudget, RetryPolicy
from services.runtime.grpc_client import ServiceToken, open_channel
from services.runtime.service import ServiceComponents

SYNC_CONSUMER = "ingest-sync"
CONNECTION_CONSUMER = "ingest-connections"


def sync_consumer_spec() -> ConsumerSpec:
    return ConsumerSpec(
        stream=streams.WORK.name,
        durable=SYNC_CONSUMER,
        filter_subjects=(subjects.MAILBOX_CHANGED_ALL,),
        ack_wait=30.0,
        max_deliver=5,
        # A busy mailbox's item waits (RetryLater) many times; each new push replaces it anyway.
        max_waits=100_000,
        # A waiting item (a re-check that looks again when the second after the last push is over, a push that
        # found a pass running) holds its slot until it comes back. The stream keeps one item per mailbox, so the
        # mailboxes bound what is pending; JetStream's default (1,000) would stall the consumer behind a burst
        # over more mailboxes than that, for up to a second.
        max_ack_pending=1_000_000,
        retry_delay=1.0,
        max_retry_delay=30.0,
    )


def connection_consumer_spec() -> ConsumerSpec:
    return ConsumerSpec(
        stream=streams.CONNECTIONS.name,
        durable=CONNECTION_CONSUMER,
        filter_subjects=(subjects.CONNECTION_ALL,),
        ack_wait=30.0,
        max_deliver=10,
    )


def sync_timing(settings: IngestSettings) -> SyncTiming:
    seconds = dt.timedelta
    return SyncTiming(
        recheck_delay=seconds(seconds=settings.recheck_delay_seconds),
        safety_poll_interval=seconds(seconds=settings.safety_poll_seconds),
        backoff_base=seconds(seconds=settings.backoff_base_seconds),
        backoff_max=seconds(seconds=settings.backoff_max_seconds),
        failures_before_failed=settings.failures_before_failed,
        failed_retry=seconds(seconds=settings.failed_retry_seconds),
        audit_interval=seconds(seconds=settings.audit_interval_seconds),
    )


def sync_config(settings: IngestSettings) -> SyncConfig:
    return SyncConfig(
        owner=f"{socket.gethostname()}:{os.getpid()}",
        timing=sync_timing(settings),
        lease_ttl=dt.timedelta(seconds=settings.lease_seconds),
        fetch_window=settings.fetch_window,
        fetch_concurrency=settings.fetch_concurrency,
        audit_max_messages=settings.audit_max_messages,
        busy_retry_seconds=settings.busy_retry_seconds,
        min_push_interval=dt.timedelta(seconds=settings.min_push_interval_seconds),
        publish_ack_timeout=settings.publish_ack_timeout_seconds,
        gmail_policy=RetryPolicy(
            max_attempts=settings.gmail_retry_attempts,
            base_delay=settings.gmail_retry_base_seconds,
            max_delay=settings.gmail_retry_max_seconds,
        ),
    )


async def fetch_certs(url: str) -> Mapping[str, str]:
    """Google's (or the sandbox's) push-token certificates, {kid: PEM}."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        certs = await response.json(content_type=None)
    return {str(kid): str(pem) for kid, pem in dict(certs).items()}


@dataclass(frozen=True)
class SyncPipeline:
    """What `add_sync_pipeline` wired, for callers that need a handle (tests, tools): the push HTTP server (its
    `port` is known once the service started), the syncer and the scheduler."""

    http: PushHttpServer
    syncer: MailboxSyncer
    scheduler: SyncScheduler


def _listen_for_connection_events(components: ServiceComponents, cache: CachedMailboxes) -> None:
    """Keeps the cache's subscription to connection events open while the service runs."""
    stopped = asyncio.Event()

    async def listen() -> None:
        await cache.listen(components.nats)
        try:
            await stopped.wait()
        finally:
            await cache.close()

    components.add_background("mailbox-cache", listen, stopped.set)


def add_sync_pipeline(
    components: ServiceComponents,
    settings: IngestSettings,
    *,
    directory: MailboxDirectory | None = None,
    tokens: AccessTokens | None = None,
    observer: PublishObserver | None = None,
    drops: DropRpcs | None = None,
) -> SyncPipeline:
    """Registers the servicer, the push HTTP server and the background loops. Without `directory`/`tokens`
    the auth service at `settings.auth_target` provides both."""
    if directory is None or tokens is None:
        channel = open_channel(
            settings.auth_target,
            settings,
            token=ServiceToken(
                components.token_keys, "ingest", ttl_seconds=settings.service_token_ttl_seconds
            ),
        )
        auth = AuthServiceClient(channel)
        components.add_cleanup(channel.close)
        if settings.mailbox_cache_seconds > 0:
            cache = CachedMailboxes(auth, auth, ttl=dt.timedelta(seconds=settings.mailbox_cache_seconds))
            _listen_for_connection_events(components, cache)
            directory, tokens = directory or cache, tokens or cache
        directory = directory or auth
        tokens = tokens or auth
    db, js = components.database, components.jetstream
    gmail_api = GmailApi(
        GmailEndpoint(
            root_url=settings.gmail_root_url or None,
            max_workers=settings.gmail_max_workers,
            quota_pacing=None
            if settings.gmail_quota_pacing == "off"
            else QuotaBudget.for_table(settings.gmail_quota_pacing),
        )
    )
    components.add_cleanup(gmail_api.aclose)
    verifier = PushTokenVerifier(
        PushAuthConfig(
            audience=settings.push_audience,
            service_account_email=settings.push_service_account_email,
            certs_url=settings.push_certs_url,
        ),
        fetch_certs,
    )
    intake = PushIntake(verifier=verifier, directory=directory, db=db, js=js)
    components.add_servicer(
        ingest_registration(IngestApi(intake=intake, directory=directory, db=db, js=js, drops=drops))
    )

    normalizer = MessageNormalizer(
        NormalizerConfig(
            processes=settings.normalize_processes,
            inline_max_chars=settings.normalize_inline_max_bytes,
            max_messages_per_process=settings.normalize_max_messages_per_process,
        )
    )
    components.add_cleanup(normalizer.close)
    scheduler = SyncScheduler(
        db=db, js=js, timing=sync_timing(settings), interval_seconds=settings.scheduler_interval_seconds
    )
    syncer = MailboxSyncer(
        db=db,
        js=js,
        directory=directory,
        tokens=tokens,
        gmail_api=gmail_api,
        config=sync_config(settings),
        observer=observer,
        normalizer=normalizer,
        expect_check_in=scheduler.expect_check_in,
    )
    for index in range(settings.sync_workers):
        worker = Consumer(components.nats, sync_consumer_spec(), syncer.handle, db=db)
        components.add_background(f"sync-worker-{index}", worker.run, worker.stop)
    events = ConnectionEventHandler(db=db, js=js)
    connection_consumer = Consumer(components.nats, connection_consumer_spec(), events.handle, db=db)
    components.add_background("connection-events", connection_consumer.run, connection_consumer.stop)
    components.add_background("sync-scheduler", scheduler.run, scheduler.stop)

    http = PushHttpServer(intake, settings.http_host, settings.http_port)
    stopped = asyncio.Event()

    async def serve_http() -> None:
        await http.start()
        try:
            await stopped.wait()
        finally:
            await http.stop()

    components.add_background("push-http", serve_http, stopped.set)
    return SyncPipeline(http=http, syncer=syncer, scheduler=scheduler)
