"""Composition root of the outbound service: wires the database, NATS and gRPC servicers into one process.

`build(settings)` creates everything (nothing connects at import time) and returns the components that
`services.runtime.service` serves and later cleans up.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from services.outbound.api import OutboundApi, outbound_registration
from services.outbound.connections import AuthConnections
from services.outbound.conversations import ThreadingConversations
from services.outbound.domain.email import EmailAddress, MessageLimits
from services.outbound.gmail_sends import GmailMailboxes
from services.outbound.ledger import SendLedger
from services.outbound.liveness import new_owner_id, open_liveness
from services.outbound.recovery import RecoveryLoop
from services.outbound.sending import BulkSender, OutboundSender, SendingConfig
from services.outbound.settings import OutboundSettings
from services.outbound.smtp import SmtpProvider, SmtpSecurity
from services.runtime.gmail import GmailApi, GmailEndpoint, RetryPolicy
from services.runtime.grpc_client import ServiceToken, open_channel
from services.runtime.service import ServiceComponents, open_foundation

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def bulk_sender(settings: OutboundSettings) -> BulkSender | None:
    """The location's SMTP provider for bulk and workflow email, when one is configured (R13)."""
    if not settings.smtp_host:
        return None
    provider = SmtpProvider(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=SmtpSecurity(settings.smtp_security.upper()),
        username=settings.smtp_username,
        password=settings.smtp_password,
    )
    return BulkSender(provider, EmailAddress(settings.smtp_sender_email, settings.smtp_sender_name))


def sending_config(settings: OutboundSettings) -> SendingConfig:
    return SendingConfig(
        message_id_domain=settings.message_id_domain,
        limits=MessageLimits(max_attachment_bytes=settings.max_attachment_bytes),
        lease=dt.timedelta(seconds=settings.send_lease_seconds),
        index_lag=dt.timedelta(seconds=settings.sent_search_index_lag_seconds),
        clock_margin=dt.timedelta(seconds=settings.sent_search_clock_margin_seconds),
        inline_wait=dt.timedelta(seconds=settings.sent_search_inline_wait_seconds),
        unknown_retry=dt.timedelta(seconds=settings.unknown_outcome_retry_seconds),
        max_concurrent_sends=settings.max_concurrent_sends,
        sent_attachment_retention=dt.timedelta(seconds=settings.sent_attachment_retention_seconds),
    )


async def build(settings: OutboundSettings) -> ServiceComponents:
    """Opens and migrates the database, connects NATS, and registers the service's servicers and tasks."""
    components = await open_foundation(settings, MIGRATIONS_DIR)
    # Held for the process's life: other processes see at once when this one is gone (services.outbound.liveness).
    liveness = await open_liveness(components.database, new_owner_id())
    components.add_cleanup(liveness.close)
    auth_channel = open_channel(
        settings.auth_target, settings, token=ServiceToken(components.token_keys, "outbound")
    )
    components.add_cleanup(auth_channel.close)
    connections = AuthConnections(auth_channel)
    gmail_api = GmailApi(
        GmailEndpoint(
            root_url=settings.gmail_root_url or None,
            timeout_seconds=settings.gmail_timeout_seconds,
            max_workers=settings.gmail_max_workers,
        )
    )
    components.add_cleanup(gmail_api.aclose)
    ledger = SendLedger(
        default_daily_limit=settings.default_daily_limit,
        workspace_daily_limit=settings.workspace_daily_limit,
        lock_mailbox=not settings.unsafe_ledger_without_lock,
    )
    sender = OutboundSender(
        components.database,
        ledger,
        connections,
        GmailMailboxes(
            gmail_api,
            connections.access_token,
            forget_token=connections.forget_token,
            policy=RetryPolicy(
                max_attempts=settings.gmail_retry_attempts, base_delay=settings.gmail_retry_base_seconds
            ),
        ),
        sending_config(settings),
        liveness=liveness,
        bulk=bulk_sender(settings),
    )
    threading_channel = open_channel(
        settings.threading_target, settings, token=ServiceToken(components.token_keys, "outbound")
    )
    components.add_cleanup(threading_channel.close)
    api = OutboundApi(
        components.database,
        sender,
        ledger,
        connections,
        max_attachment_bytes=settings.max_attachment_bytes,
        attachment_ttl=dt.timedelta(seconds=settings.attachment_ttl_seconds),
        conversations=ThreadingConversations(threading_channel),
    )
    components.add_servicer(outbound_registration(api))
    recovery = RecoveryLoop(
        components.database, sender, liveness, interval_seconds=settings.recovery_interval_seconds
    )
    components.add_background("send-recovery", recovery.run, recovery.stop)
    return components
