"""Settings of the threading service: the shared ones (MAILSYNC_*) with threading defaults and its own fields.

Every field can be set with MAILSYNC_THREADING_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.runtime.settings import ServiceSettings


class ThreadingSettings(ServiceSettings):
    """The threading service's configuration."""

    service_name: ClassVar[str] = "threading"

    grpc_port: int = Field(default=50053, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    ingest_target: str = Field(
        default="127.0.0.1:50052",
        description="host:port of the ingest service (FetchAttachment: the content of a placed message's "
        "attachments).",
    )
    blob_dir: Path | None = Field(
        default=None,
        description="Folder of the content-addressed attachment store (empty: <data_dir>/threading-blobs).",
    )
    wait_budget_deliveries: int = Field(
        default=6,
        ge=0,
        description="Deliveries during which a message may wait for a CRM send's answer (R6) or for its parent "
        "(R4) before the rules decide with what they know.",
    )
    wait_delay_seconds: float = Field(
        default=2.0, gt=0, description="Delay before a waiting message is delivered again."
    )
    consumer_ack_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long JetStream waits for a consumer's ack before redelivering (a crashed replica's "
        "messages come back after this).",
    )
    consumer_batch_size: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Messages a consumer fetches and applies in one database transaction (1 applies them one by one).",
    )
    watch_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a WatchMessages stream looks for messages placed by other replicas.",
    )

    @property
    def blob_folder(self) -> Path:
        return self.blob_dir or self.data_dir / "threading-blobs"
