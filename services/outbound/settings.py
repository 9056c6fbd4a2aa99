"""Settings of the outbound service: the shared ones (MAILSYNC_*) with outbound defaults and its own fields.

Every field can be set with MAILSYNC_OUTBOUND_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.runtime.settings import ServiceSettings


class OutboundSettings(ServiceSettings):
    """The outbound service's configuration."""

    service_name: ClassVar[str] = "outbound"

    grpc_port: int = Field(default=50054, ge=0, le=65535, description="gRPC port (0 picks a free port).")
