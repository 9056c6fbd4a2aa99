"""Settings of the threading service: the shared ones (MAILSYNC_*) with threading defaults and its own fields.

Every field can be set with MAILSYNC_THREADING_<FIELD>, and the shared ones also with MAILSYNC_<FIELD>.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

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
    outbound_target: str = Field(
        default="127.0.0.1:50054",
        description="host:port of the outbound service (FetchSentAttachment: the attachments of CRM sends).",
    )
    blob_dir: Path | None = Field(
        default=None,
        description="Folder of the content-addressed attachment store (empty: <data_dir>/threading-blobs).",
    )
    blob_store: Literal["folder", "s3"] = Field(
        default="folder",
        description="Where attachment content lives: 'folder' (blob_dir, one machine) or 's3' (an "
        "S3-compatible bucket every replica shares; the blob_s3_* settings).",
    )
    blob_s3_bucket: str = Field(default="", description="The bucket of blob_store=s3 (required with it).")
    blob_s3_prefix: str = Field(
        default="attachments/", description="Key prefix of the blobs in the bucket (ends with '/')."
    )
    blob_s3_endpoint_url: str = Field(
        default="",
        description="URL of an S3-compatible server (MinIO, Ceph, GCS interop, ...); empty: AWS S3 itself.",
    )
    blob_s3_region: str = Field(default="", description="The bucket's region (empty: boto3's default chain).")
    blob_s3_access_key_id: str = Field(
        default="",
        description="Access key id; empty: boto3's credential chain (workload identity, AWS_* variables).",
    )
    blob_s3_secret_access_key: str = Field(
        default="", repr=False, description="Secret of blob_s3_access_key_id."
    )
    blob_s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket addressing: 'path' for most S3-compatible servers reached by IP or one host name.",
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
    consumer_linger_seconds: float = Field(
        default=0.05,
        ge=0,
        le=1.0,
        description="When a fetch of the messages consumer comes back with fewer than a batch, how long it waits "
        "once for more before applying them (0: never): fuller batches cost less CPU per message, and each message "
        "waits at most about this much longer.",
    )
    watch_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a WatchMessages stream looks for messages placed by other replicas.",
    )

    @model_validator(mode="after")
    def _bucket_with_s3(self) -> Self:
        if self.blob_store == "s3" and not self.blob_s3_bucket.strip():
            raise ValueError(
                "blob_store=s3 needs a bucket: set MAILSYNC_THREADING_BLOB_S3_BUCKET (or use blob_store=folder)"
            )
        return self

    @property
    def blob_folder(self) -> Path:
        return self.blob_dir or self.data_dir / "threading-blobs"
