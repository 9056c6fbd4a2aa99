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
