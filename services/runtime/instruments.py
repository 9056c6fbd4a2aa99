"""The product's metric instruments, named and described in one place (docs/observability.md lists them).

Names follow the OpenTelemetry semantic conventions where one exists (`rpc.server.call.duration`,
`http.server.request.duration`, `db.client.connection.count`, `messaging.*`); the product's own are under
`mailsync.` (and `gmail.` for what Google counts). Every label set is bounded: rule ids, outcomes, methods,
durable names, tiers, never a mailbox, location or message id.

Instruments come from the global meter provider when first asked for (nothing is created at import), so a process
that configured telemetry exports them and one that did not (unit tests, tools) records into a no-op.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from opentelemetry import metrics

from mailsync.v1 import auth_pb2

METER_NAME = "mailsync"
# Histograms in seconds: from a fast RPC (milliseconds) to a sync lag of an hour.
SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)


@dataclass(frozen=True)
class ProductInstruments:
    """Every synchronous instrument the services record into (the polled gauges live in `backlog_gauges`)."""

    rpc_duration: metrics.Histogram
    http_duration: metrics.Histogram
    messages_normalized: metrics.Counter
    messages_decided: metrics.Counter
    sync_lag: metrics.Histogram
    dead_letters: metrics.Counter
    gmail_requests: metrics.Counter
    sends: metrics.Counter
    send_limiter_remaining: metrics.Histogram
    token_refreshes: metrics.Counter
    reauth_required: metrics.Counter
    smtp_drops: metrics.Counter


@functools.cache
def instruments() -> ProductInstruments:
    """The instruments, created once per process from the global meter provider."""
    meter = metrics.get_meter(METER_NAME)
    return ProductInstruments(
        rpc_duration=meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of gRPC calls served, by method and status",
        ),
        http_duration=meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP requests served (Gmail pushes, the OAuth callback), by route and status",
        ),
        messages_normalized=meter.create_counter(
            "mailsync.messages.normalized",
            unit="{message}",
            description="Messages ingest normalized and published, by source (gmail, bcc_drop)",
        ),
        messages_decided=meter.create_counter(
            "mailsync.messages.decided",
            unit="{decision}",
            description="Per-location decisions of threading: placed (synced) or not, by rule, source and the "
            "tier of the mailbox the copy came from",
        ),
        sync_lag=meter.create_histogram(
            "mailsync.sync.lag",
            unit="s",
            description="Time from Gmail's internal date (from=internal_date) or from the push (from=push) until "
            "the message was stored",
        ),
        dead_letters=meter.create_counter(
            "mailsync.dead_letters",
            unit="{message}",
            description="Messages a consumer gave up on and recorded as dead letters, by durable",
        ),
        gmail_requests=meter.create_counter(
            "gmail.requests",
            unit="{request}",
            description="Gmail API requests sent, by method and outcome (ok or the error class)",
        ),
        sends=meter.create_counter(
            "mailsync.sends", unit="{send}", description="CRM sends finished, by channel and outcome"
        ),
        send_limiter_remaining=meter.create_histogram(
            "mailsync.send_limiter.remaining",
            unit="{send}",
            description="Sends a mailbox had left in its rolling day when a send was admitted, by mailbox tier",
        ),
        token_refreshes=meter.create_counter(
            "mailsync.token_refreshes",
            unit="{refresh}",
            description="Google access token refreshes, by outcome (ok, reauth_required, error)",
        ),
        reauth_required=meter.create_counter(
            "mailsync.connections.reauth_required",
            unit="{connection}",
            description="Connections that lost their grant and now need the user to reconnect",
        ),
        smtp_drops=meter.create_counter(
            "mailsync.bcc_drops",
            unit="{message}",
            description="BCC drops received over SMTP or gRPC, by outcome (accepted or the refusal reason)",
        ),
    )


# `mailsync.mailbox_tier` label values by auth's AccountType: the same three the send limiter's metric uses, so the
# label is bounded and reads the same on every metric that has it.
_MAILBOX_TIERS: dict[int, str] = {
    auth_pb2.ACCOUNT_TYPE_CONSUMER: "consumer",
    auth_pb2.ACCOUNT_TYPE_WORKSPACE: "workspace",
}


def mailbox_tier(account_type: int) -> str:
    """The `mailsync.mailbox_tier` label value of an AccountType ("unknown" when Google did not say)."""
    return _MAILBOX_TIERS.get(account_type, "unknown")
