"""Settings of the outbound service: the shared ones (MAILSYNC_*) with outbound defaults and its own fields.

Every field can be set with MAILSYNC_OUTBOUND_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from services.runtime.settings import ServiceSettings

SMTP_SECURITY_MODES = ("NONE", "STARTTLS", "IMPLICIT_TLS")


class OutboundSettings(ServiceSettings):
    """The outbound service's configuration."""

    service_name: ClassVar[str] = "outbound"

    grpc_port: int = Field(default=50054, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    auth_target: str = Field(
        default="127.0.0.1:50051",
        description="host:port of the auth service (the user's connection in a location, access tokens).",
    )
    threading_target: str = Field(
        default="127.0.0.1:50053",
        description="host:port of the threading service (a reply's conversation must be of the sender's location).",
    )
    gmail_root_url: str = Field(
        default="", description="Gmail API root; empty means Google, a URL points at the Gmail sandbox."
    )
    gmail_max_workers: int = Field(
        default=16, gt=0, description="Threads running blocking Gmail client calls (shared by every mailbox)."
    )
    message_id_domain: str = Field(
        default="mailsync.invalid", description="The domain of the Message-IDs this service writes."
    )
    default_daily_limit: int = Field(
        default=500,
        gt=0,
        description="Sends per rolling 24 hours of a consumer Gmail account, and of an account whose type Google "
        "did not say, unless a limit was set for the mailbox (SetSendLimit).",
    )
    workspace_daily_limit: int = Field(
        default=2000,
        gt=0,
        description="Sends per rolling 24 hours of a Google Workspace account (R14), unless a limit was set for "
        "the mailbox.",
    )
    max_attachment_bytes: int = Field(
        default=25 * 1024 * 1024, gt=0, description="Total attachment bytes of one message (R14)."
    )
    attachment_ttl_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How long an uploaded attachment waits for the SendEmail that uses it.",
    )
    send_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long one process owns a send in progress without renewing it; after it, recovery takes "
        "the send over. A crashed process's sends are taken over at once (its liveness lock is gone), so this "
        "only bounds what no lock tells (a cut-off database session). Longer than the Gmail timeout.",
    )
    sent_search_index_lag_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Gmail's search index lags behind what it accepted: a Sent-folder search proves a send of "
        "unknown outcome absent (and lets it be sent again) only this long after its call could last have "
        "been accepted.",
    )
    sent_search_clock_margin_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Our clock against Google's: the Sent-folder window of a send of unknown outcome is widened "
        "by this on both sides.",
    )
    sent_search_inline_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A SendEmail whose Gmail call got no answer waits this long for Gmail's index inline; "
        "longer, it answers SENDING and the recovery loop settles the send.",
    )
    unknown_outcome_retry_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How soon a send whose Sent folder could not be read (UNKNOWN) is searched again.",
    )
    recovery_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often sends left unsettled (by a crashed process, an expired lease or an unknown "
        "outcome) are looked for; a restarted process looks at once.",
    )
    sent_attachment_retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="How long the uploads a send used stay readable for threading (GetAttachment of the CRM "
        "message) after the send.",
    )
    max_concurrent_sends: int = Field(
        default=32, gt=0, description="Sends one process works on at once (more wait their turn)."
    )
    gmail_retry_attempts: int = Field(
        default=5, gt=0, description="Tries of one Gmail read (search, metadata) on rate limits and 5xx."
    )
    gmail_retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First backoff between Gmail read retries (doubles, with jitter)."
    )
    gmail_timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one Gmail HTTP request.")
    unsafe_ledger_without_lock: bool = Field(
        default=False,
        description="Admit sends without the per-mailbox lock. Only for the test that shows the limit is then "
        "over-admitted; never in production.",
    )
    smtp_host: str = Field(default="", description="Bulk and workflow email: the SMTP provider's host (R13).")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="Port of the SMTP provider.")
    smtp_security: str = Field(
        default="STARTTLS", description="NONE, STARTTLS or IMPLICIT_TLS for the SMTP provider."
    )
    smtp_username: str = Field(default="", description="SMTP login (empty: no AUTH).")
    smtp_password: str = Field(default="", description="SMTP password.")
    smtp_sender_email: str = Field(
        default="", description="The From address of bulk and workflow email (the location's sender)."
    )
    smtp_sender_name: str = Field(default="", description="The From display name of bulk and workflow email.")

    @field_validator("smtp_security")
    @classmethod
    def _known_security(cls, value: str) -> str:
        security = value.strip().upper()
        if security not in SMTP_SECURITY_MODES:
            raise ValueError(f"must be one of {', '.join(SMTP_SECURITY_MODES)}")
        return security
