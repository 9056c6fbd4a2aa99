"""Settings of the ingest service: the shared ones (MAILSYNC_*) with ingest defaults and its own fields.

Every field can be set with MAILSYNC_INGEST_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.runtime.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """The ingest service's configuration."""

    service_name: ClassVar[str] = "ingest"

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP server for the Gmail Pub/Sub push endpoint binds."
    )
    http_port: int = Field(
        default=8082,
        ge=0,
        le=65535,
        description="HTTP port for the Gmail Pub/Sub push endpoint (0 picks a free port).",
    )
