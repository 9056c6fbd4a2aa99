"""Settings of the threading service: the shared ones (MAILSYNC_*) with threading defaults and its own fields.

Every field can be set with MAILSYNC_THREADING_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.runtime.settings import ServiceSettings


class ThreadingSettings(ServiceSettings):
    """The threading service's configuration."""

    service_name: ClassVar[str] = "threading"

    grpc_port: int = Field(default=50053, ge=0, le=65535, description="gRPC port (0 picks a free port).")
