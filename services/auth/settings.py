"""Settings of the auth service: the shared ones (MAILSYNC_*) with auth defaults and its own fields.

Every field can be set with MAILSYNC_AUTH_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.runtime.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    """The auth service's configuration."""

    service_name: ClassVar[str] = "auth"

    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP server for the OAuth consent callback binds."
    )
    http_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="HTTP port for the OAuth consent callback (0 picks a free port).",
    )

    google_client_id: str = Field(
        default="sandbox-client.apps.googleusercontent.com",
        description="OAuth client id registered with Google (the default is the Gmail sandbox's client).",
    )
    google_client_secret: str = Field(
        default="sandbox-secret", description="OAuth client secret of google_client_id.", repr=False
    )
    google_authorization_uri: str = Field(
        default="https://accounts.google.com/o/oauth2/v2/auth",
        description="Google's consent page; the sandbox's is <sandbox>/o/oauth2/v2/auth.",
    )
    google_token_uri: str = Field(
        default="https://oauth2.googleapis.com/token", description="Code exchange and refresh endpoint."
    )
    google_revoke_uri: str = Field(
        default="https://oauth2.googleapis.com/revoke", description="Grant revocation endpoint."
    )
    google_userinfo_uri: str = Field(
        default="https://openidconnect.googleapis.com/v1/userinfo",
        description="OpenID userinfo endpoint (the mailbox address itself comes from Gmail's getProfile).",
    )
    gmail_root_url: str = Field(
        default="", description="Gmail API root; empty means Google, a URL points at the Gmail sandbox."
    )
    gmail_max_workers: int = Field(
        default=4, gt=0, description="Threads running blocking Gmail client calls."
    )
    oauth_redirect_uri: str = Field(
        default="http://127.0.0.1:8081/oauth/callback",
        description="The redirect URI registered with Google, matched exactly; must reach this service's "
        "GET /oauth/callback.",
    )
    oauth_state_ttl_seconds: int = Field(
        default=600, gt=0, description="How long a begun connect may take before its state expires."
    )
    return_url_origins: str = Field(
        default="",
        description="Comma-separated origins (scheme://host[:port]) a BeginConnect return_url may point at; "
        "empty allows none.",
    )
    token_keys: str = Field(
        default="",
        repr=False,
        description="Keys sealing the Gmail tokens at rest: 'v2:<base64url 32 bytes>,v1:<...>', the encrypting "
        "key first. Required to serve.",
    )
    pubsub_topic: str = Field(
        default="projects/sandbox-project/topics/gmail",
        description="The Pub/Sub topic Gmail watches publish to (projects/<project>/topics/<name>).",
    )
    watch_label_ids: str = Field(
        default="", description="Comma-separated Gmail label ids a watch is limited to (empty: all mail)."
    )
    watch_renewal_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often the service renews the watches that are due (daily each).",
    )
