"""Wires BCC drops and attachment fetching into the ingest process: the SMTP listener, the admission over ingest's
store and auth's ListUsers, the drop-content retention (its purge and its `message.synced` consumer), and the RPCs
IngestApi delegates to.

`add_bcc_drops(components, settings)` is called by the composition root (`app.build`) before the sync pipeline,
which hands the returned `rpcs` to IngestApi; what it opens, it registers for cleanup.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from services.ingest.attachments import AttachmentSource
from services.ingest.auth_client import AuthServiceClient
from services.ingest.bcc_drop import BccDropAdmission, LocationUsers
from services.ingest.dns_txt import dns_txt_lookup
from services.ingest.domain.bcc import DnsTxtLookup, DropPolicy
from services.ingest.drop_retention import DropEventQueue, DropRetention
from services.ingest.drops import BccAddresses, DropLog, OutboxDropSink
from services.ingest.drops_api import DropRpcs
from services.ingest.location_users import AuthLocationUsers
from services.ingest.mailboxes import AccessTokens
from services.ingest.settings import IngestSettings
from services.ingest.smtp import CertificateFiles, ListenerLimits, start_smtp_listener
from services.runtime import streams, subjects
from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import Consumer, ConsumerSpec
from services.runtime.gmail import GmailApi, GmailEndpoint, RetryPolicy
from services.runtime.grpc_client import ServiceToken, open_channel
from services.runtime.service import ServiceComponents, StartupError

PLACEMENT_CONSUMER = "ingest-drop-placements"
# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

log = logging.getLogger(__name__)


def return_large_buffers_to_the_os() -> bool:
    """Makes glibc give every buffer over 128 KiB its own mapping, returned to the OS when freed, and keeps the
    number of malloc arenas small. By default glibc raises that threshold to the largest buffer freed so far, so
    after one 25 MB drop every later large buffer lands in the heap, fragments it and stays in RSS; each thread
    that parses a drop also gets an arena of its own. Measured with four concurrent 24 MB drops
    (tools/bench_drops.py): peak RSS 448 -> 339 MB, 353 -> 183 MB after. False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)) and bool(libc.mallopt(_M_ARENA_MAX, 2))
    except (OSError, AttributeError):
        return False


@dataclass
class SmtpListener:
    """The drop listener's address once the service started (port 0 in the settings picks a free one)."""

    host: str
    port: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class BccDrops:
    rpcs: DropRpcs
    addresses: BccAddresses
    admission: BccDropAdmission
    smtp: SmtpListener | None


def drop_policy(settings: IngestSettings) -> DropPolicy:
    return DropPolicy(
        drop_domain=settings.bcc_drop_domain,
        trusted_authserv_ids=tuple(
            host.strip() for host in settings.bcc_trusted_authserv_ids.split(",") if host.strip()
        ),
        max_message_bytes=settings.bcc_max_drop_bytes,
    )


def listener_limits(settings: IngestSettings) -> ListenerLimits:
    return ListenerLimits(
        max_sessions=settings.bcc_smtp_max_sessions,
        max_concurrent_drops=settings.bcc_max_concurrent_drops,
        spool_memory_bytes=settings.bcc_smtp_spool_memory_bytes,
        spool_directory=Path(settings.bcc_smtp_spool_dir) if settings.bcc_smtp_spool_dir else None,
        max_line_bytes=settings.bcc_smtp_max_line_bytes,
    )


def placement_consumer_spec() -> ConsumerSpec:
    """`message.synced` from threading: which drops were placed, so their content is kept (drop_retention)."""
    return ConsumerSpec(
        stream=streams.SYNCED.name,
        durable=PLACEMENT_CONSUMER,
        filter_subjects=(subjects.MESSAGE_SYNCED_ALL,),
        ack_wait=30.0,
        max_deliver=10,
    )


def smtp_certificate(settings: IngestSettings) -> CertificateFiles | None:
    """The STARTTLS certificate, loaded once now so a wrong path or key stops the start (exit 2)."""
    certificate, key = settings.bcc_smtp_tls_certificate_file, settings.bcc_smtp_tls_key_file
    if not certificate and not key:
        if settings.bcc_smtp_require_starttls:
            raise StartupError(
                f"{settings.variable_for('bcc_smtp_require_starttls')} needs a certificate: set "
                f"{settings.variable_for('bcc_smtp_tls_certificate_file')} and "
                f"{settings.variable_for('bcc_smtp_tls_key_file')}"
            )
        return None
    if not certificate or not key:
        missing = "bcc_smtp_tls_key_file" if certificate else "bcc_smtp_tls_certificate_file"
        raise StartupError(
            f"{settings.variable_for(missing)} must be set too: STARTTLS needs a certificate and its key"
        )
    files = CertificateFiles(Path(certificate), Path(key))
    try:
        files.context()
    except (OSError, ValueError) as error:
        raise StartupError(
            f"{settings.variable_for('bcc_smtp_tls_certificate_file')}: cannot load the STARTTLS certificate "
            f"{certificate} with key {key}: {error}"
        ) from None
    return files


def add_bcc_drops(
    components: ServiceComponents,
    settings: IngestSettings,
    *,
    users: LocationUsers | None = None,
    tokens: AccessTokens | None = None,
    dns_txt: DnsTxtLookup | None = None,
    clock: Clock | None = None,
) -> BccDrops:
    """Registers the SMTP listener (unless disabled) and the purge loop; returns the RPCs for IngestApi.

    Without `users`/`tokens` the auth service at `settings.auth_target` provides both; without `dns_txt` DKIM is
    verified through the system resolver when `settings.bcc_verify_dkim` is set."""
    clock = clock or SystemClock()
    if not return_large_buffers_to_the_os():
        log.info("not on glibc: large buffers are left to the platform's allocator")
    db = components.database
    if users is None or tokens is None:
        channel = open_channel(
            settings.auth_target,
            settings,
            token=ServiceToken(
                components.token_keys, "ingest", ttl_seconds=settings.service_token_ttl_seconds
            ),
        )
        components.add_cleanup(channel.close)
        users = users or AuthLocationUsers(channel)
        tokens = tokens or AuthServiceClient(channel)
    if dns_txt is None and settings.bcc_verify_dkim:
        dns_txt = dns_txt_lookup()
    certificate = smtp_certificate(settings)
    addresses = BccAddresses(db, settings.bcc_drop_domain, clock=clock)
    retention = DropRetention(
        db,
        placement_grace=dt.timedelta(seconds=settings.bcc_drop_placement_grace_seconds),
        retention=dt.timedelta(seconds=settings.bcc_drop_content_retention_seconds),
        undecided=DropEventQueue(components.jetstream),
        interval_seconds=settings.bcc_purge_interval_seconds,
        clock=clock,
    )
    sink = OutboxDropSink(db, retention=retention, clock=clock)
    admission = BccDropAdmission(
        policy=drop_policy(settings),
        locations=addresses,
        users=users,
        sink=sink,
        dns_txt=dns_txt,
        clock=clock,
        refusals=DropLog(db, clock=clock),
    )
    gmail_api = GmailApi(GmailEndpoint(root_url=settings.gmail_root_url or None, max_workers=2))
    components.add_cleanup(gmail_api.aclose)
    attachments = AttachmentSource(
        db=db,
        gmail_api=gmail_api,
        tokens=tokens,
        gmail_policy=RetryPolicy(
            max_attempts=settings.gmail_retry_attempts,
            base_delay=settings.gmail_retry_base_seconds,
            max_delay=settings.gmail_retry_max_seconds,
        ),
        clock=clock,
        on_drop_fetched=retention.fetched,
    )
    components.add_background("bcc-drop-purge", retention.run, retention.stop)
    placements = Consumer(components.nats, placement_consumer_spec(), retention.handle_synced, db=db)
    components.add_background("bcc-drop-placements", placements.run, placements.stop)
    listener = None
    if settings.bcc_smtp_enabled:
        listener = SmtpListener(settings.bcc_smtp_host)
        stopped = asyncio.Event()

        async def serve_smtp() -> None:
            server = await start_smtp_listener(
                admission,
                host=settings.bcc_smtp_host,
                port=settings.bcc_smtp_port,
                hostname=settings.bcc_drop_domain,
                limits=listener_limits(settings),
                tls=certificate,
                require_starttls=settings.bcc_smtp_require_starttls,
            )
            listener.port = int(server.sockets[0].getsockname()[1])
            listener.started.set()
            try:
                await stopped.wait()
            finally:
                server.close()
                await server.wait_closed()

        components.add_background("bcc-smtp", serve_smtp, stopped.set)
    return BccDrops(
        rpcs=DropRpcs(admission=admission, addresses=addresses, attachments=attachments),
        addresses=addresses,
        admission=admission,
        smtp=listener,
    )
