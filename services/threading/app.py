"""Composition root of the threading service: wires the database, NATS and gRPC servicers into one process.

`build(settings)` creates everything (nothing connects at import time) and returns the components that
`services.runtime.service` serves and later cleans up.
"""

from __future__ import annotations

from pathlib import Path

from mailsync.v1 import threading_pb2, threading_pb2_grpc
from services.runtime.consumer import BatchConsumer
from services.runtime.grpc_client import ServiceToken, open_channel
from services.runtime.grpc_server import ServicerRegistration
from services.runtime.service import ServiceComponents, open_foundation
from services.threading.api import SyncedFeedSignal, ThreadingServicer
from services.threading.blobs import AttachmentCollector, AttachmentFetcher, open_blob_store
from services.threading.consumers import (
    ThreadingHandlers,
    WaitPolicy,
    message_consumer_spec,
    outbox_events,
    send_consumer_spec,
)
from services.threading.ingest_attachments import IngestAttachmentFetcher
from services.threading.sent_attachments import OutboundAttachmentFetcher, RoutedAttachmentFetcher
from services.threading.settings import ThreadingSettings
from services.threading.store.values import Applied
from services.threading.sync import MessageSync

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


async def build(
    settings: ThreadingSettings, *, attachment_fetcher: AttachmentFetcher | None = None
) -> ServiceComponents:
    """Opens and migrates the database, connects NATS, and registers the service's servicers and tasks.

    Attachment content comes from ingest's FetchAttachment at `settings.ingest_target`, and for attachments of
    CRM sends from outbound's FetchSentAttachment at `settings.outbound_target`, on channels with an internal
    service token, unless another fetcher is given."""
    components = await open_foundation(settings, MIGRATIONS_DIR)
    db = components.database
    blobs = open_blob_store(settings)
    feed_signal = SyncedFeedSignal()
    if attachment_fetcher is None:
        ingest_channel = open_channel(
            settings.ingest_target, settings, token=ServiceToken(components.token_keys, "threading")
        )
        components.add_cleanup(ingest_channel.close)
        outbound_channel = open_channel(
            settings.outbound_target, settings, token=ServiceToken(components.token_keys, "threading")
        )
        components.add_cleanup(outbound_channel.close)
        attachment_fetcher = RoutedAttachmentFetcher(
            sends=OutboundAttachmentFetcher(outbound_channel), mail=IngestAttachmentFetcher(ingest_channel)
        )
    collector = AttachmentCollector(db, blobs, attachment_fetcher)

    def on_applied(applied: Applied) -> None:
        # Once per committed batch, and only who has something to do.
        feed_signal.notify(applied.placed_locations)
        if applied.attachments_to_fetch:
            collector.wake()

    policy = WaitPolicy(
        budget=settings.wait_budget_deliveries,
        delay_seconds=settings.wait_delay_seconds,
        ack_wait_seconds=settings.consumer_ack_wait_seconds,
        batch_size=settings.consumer_batch_size,
        linger_seconds=settings.consumer_linger_seconds,
    )
    handlers = ThreadingHandlers(
        MessageSync(db, events=outbox_events()), policy=policy, on_applied=on_applied
    )
    message_consumer = BatchConsumer(
        components.nats, message_consumer_spec(policy), handlers.handle_message_batch, db=db
    )
    send_consumer = BatchConsumer(
        components.nats, send_consumer_spec(policy), handlers.handle_send_batch, db=db
    )
    components.add_background("threading-messages", message_consumer.run, message_consumer.stop)
    components.add_background("threading-sends", send_consumer.run, send_consumer.stop)
    components.add_background("threading-attachments", collector.run, collector.stop)
    components.add_servicer(
        ServicerRegistration(
            service=threading_pb2.DESCRIPTOR.services_by_name["ThreadingService"],
            servicer=ThreadingServicer(
                db, blobs, feed_signal=feed_signal, watch_poll_seconds=settings.watch_poll_seconds
            ),
            add_to_server=threading_pb2_grpc.add_ThreadingServiceServicer_to_server,
        )
    )
    return components
