"""Settings of the ingest service: the shared ones (MAILSYNC_*) with ingest defaults and its own fields.

Every field can be set with MAILSYNC_INGEST_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from services.runtime.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """The ingest service's configuration."""

    service_name: ClassVar[str] = "ingest"

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    grpc_max_message_bytes: int = Field(
        default=27 * 1024 * 1024,
        gt=0,
        description="Largest gRPC message sent or received; above the largest BCC drop SubmitBccDrop carries.",
    )
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP server for the Gmail Pub/Sub push endpoint binds."
    )
    http_port: int = Field(
        default=8082,
        ge=0,
        le=65535,
        description="HTTP port for the Gmail Pub/Sub push endpoint (0 picks a free port).",
    )
    auth_target: str = Field(
        default="127.0.0.1:50051",
        description="host:port of the auth service (GetMailbox, GetAccessToken) for the sync worker.",
    )
    # Off by default: between a connect and its event reaching ingest a cached snapshot lacks the new location,
    # and a message synced in that window is decided for the old locations only (seen once as R2 for R3).
    mailbox_cache_seconds: float = Field(
        default=0.0,
        ge=0,
        description="How long a mailbox's connection snapshot from auth is reused (dropped by the mailbox's "
        "connection events, which can arrive after mail synced in between; 0: ask auth every time).",
    )
    gmail_root_url: str = Field(
        default="", description="Gmail API root; empty means Google, a URL points at the Gmail sandbox."
    )
    gmail_max_workers: int = Field(
        default=16, gt=0, description="Threads running blocking Gmail client calls (shared by every mailbox)."
    )
    gmail_quota_pacing: Literal["legacy", "2026", "off"] = Field(
        default="legacy",
        description="Paces each mailbox's Gmail requests to Google's per-user quota so none is refused: "
        "'legacy' (250 units/s, projects created before May 2026), '2026' (6,000 units/min), or 'off'.",
    )
    push_audience: str = Field(
        default="http://127.0.0.1:8082/gmail/push",
        description="The `aud` Google's push tokens must carry (the push subscription's audience).",
    )
    push_service_account_email: str = Field(
        default="gmail-push@sandbox-project.iam.gserviceaccount.com",
        description="The service account the push subscription signs its tokens as.",
    )
    push_certs_url: str = Field(
        default="https://www.googleapis.com/oauth2/v1/certs",
        description="Where Google's token-signing certificates are ({kid: PEM}); the sandbox serves its own.",
    )
    sync_workers: int = Field(
        default=16,
        gt=0,
        description="Mailbox passes one process runs at once (each on a different mailbox): while one waits "
        "for Gmail, JetStream or the database, the others proceed.",
    )
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A worker's hold on a mailbox; renewed while it works, taken over after.",
    )
    recheck_delay_seconds: float = Field(
        default=0.25,
        ge=0,
        description="A mailbox that just had work is looked at again this soon (Google drops pushes above one a "
        "second): its next message waits about this plus a pass, not for the next push. A re-check that finds "
        "nothing ends the chain, so a busy spell costs one empty pass whatever this is.",
    )
    safety_poll_seconds: float = Field(
        default=600.0, gt=0, description="Every mailbox is looked at at least this often, pushes or not."
    )
    scheduler_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often the scheduler queues due re-checks, polls and retries."
    )
    backoff_base_seconds: float = Field(
        default=30.0, gt=0, description="First delay after a failed pass; doubles with each failure in a row."
    )
    backoff_max_seconds: float = Field(
        default=1800.0, gt=0, description="Longest delay between failed passes."
    )
    failures_before_failed: int = Field(
        default=6, gt=0, description="Failed passes in a row before the mailbox is FAILED (retried slowly)."
    )
    failed_retry_seconds: float = Field(
        default=3600.0, gt=0, description="How often a FAILED mailbox is retried."
    )
    audit_interval_seconds: float = Field(
        default=21600.0, gt=0, description="How often each mailbox's recent Gmail messages are audited."
    )
    audit_max_messages: int = Field(default=200, gt=0, description="Recent messages one audit compares.")
    fetch_window: int = Field(
        default=100,
        gt=0,
        description="Messages fetched and published per step of a pass (the ledger moves per step).",
    )
    fetch_concurrency: int = Field(
        default=2, gt=0, description="messages.get batches (of 25) of one mailbox in flight at once."
    )
    normalize_processes: int = Field(
        default=2,
        ge=0,
        description="Worker processes that parse large fetched messages off the event loop (0: all inline).",
    )
    normalize_inline_max_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="A fetched message up to this size (base64url) is parsed inline; larger ones go to the workers.",
    )
    normalize_max_messages_per_process: int = Field(
        default=200, gt=0, description="A normalization worker process is replaced after this many messages."
    )
    publish_ack_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long the acks of a step's publishes (sent together) are awaited before the unacked "
        "ones are sent again.",
    )
    gmail_retry_attempts: int = Field(
        default=5,
        gt=0,
        description="Tries of one Gmail request on rate limits and 5xx before the pass fails.",
    )
    gmail_retry_base_seconds: float = Field(
        default=1.0, gt=0, description="First backoff between Gmail retries (doubles, with jitter)."
    )
    gmail_retry_max_seconds: float = Field(
        default=32.0, gt=0, description="Longest backoff between Gmail retries."
    )
    busy_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How soon, at the longest, a work item for a mailbox another worker holds is tried again: first "
        "after the re-check delay, then doubling up to this while the other pass runs.",
    )
    min_push_interval_seconds: float = Field(
        default=0.25,
        ge=0,
        description="Pushes of a mailbox synced less than this ago wait and coalesce into one pass (a repeated "
        "push, or one right after a pass); longer, a push right after a re-check makes its mail wait for no gain.",
    )
    bcc_drop_domain: str = Field(
        default="drop.mailsync.localhost",
        description="Domain of the locations' BCC addresses (bcc+<token>@<domain>); mail for it reaches the listener.",
    )
    bcc_trusted_authserv_ids: str = Field(
        default="",
        description="Comma-separated authserv-ids (e.g. mx.google.com) of the receiving hosts whose topmost "
        "Authentication-Results header is trusted; empty: only DKIM verified by ingest counts.",
    )
    bcc_verify_dkim: bool = Field(
        default=True, description="Verify drops' DKIM signatures through the system DNS resolver."
    )
    bcc_smtp_enabled: bool = Field(default=True, description="Run the BCC-drop SMTP listener.")
    bcc_smtp_host: str = Field(default="127.0.0.1", description="Address the BCC-drop SMTP listener binds.")
    bcc_smtp_port: int = Field(
        default=2525, ge=0, le=65535, description="BCC-drop SMTP port (0 picks a free port)."
    )
    bcc_max_drop_bytes: int = Field(
        default=25 * 1024 * 1024, gt=0, description="Largest drop accepted (SIZE, enforced during DATA)."
    )
    bcc_drop_content_retention_seconds: float = Field(
        default=259200.0,
        gt=0,
        description="How long an accepted drop's content is kept for FetchAttachment once threading placed it.",
    )
    bcc_drop_placement_grace_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a drop's content is kept after threading decided on it without placing it (R18); "
        "restarts while threading has not decided yet.",
    )
    bcc_purge_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often drop content that is no longer needed is forgotten."
    )
    bcc_smtp_max_sessions: int = Field(
        default=20,
        gt=0,
        description="SMTP sessions one process serves at once; more are told 421 (try later).",
    )
    bcc_max_concurrent_drops: int = Field(
        default=1,
        gt=0,
        description="Received drops one process reads back and checks at once (each up to the drop size in "
        "memory, a few times over while parsed); others wait, spooled.",
    )
    bcc_smtp_spool_memory_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Bytes of a drop a session keeps in memory while DATA arrives; the rest goes to a temporary file.",
    )
    bcc_smtp_spool_dir: str = Field(
        default="",
        description="Folder for the spool files of drops being received; empty: the system's temporary folder.",
    )
    bcc_smtp_max_line_bytes: int = Field(
        default=8192,
        ge=998,
        description="Longest line a drop may have (RFC 5321 allows 1,000 with CRLF; clients often write longer).",
    )
    bcc_smtp_tls_certificate_file: str = Field(
        default="",
        description="PEM certificate (chain) the SMTP listener offers STARTTLS with; empty: no STARTTLS.",
    )
    bcc_smtp_tls_key_file: str = Field(default="", description="PEM private key of that certificate.")
    bcc_smtp_require_starttls: bool = Field(
        default=False,
        description="Refuse mail commands until the client has started TLS (needs a certificate).",
    )
