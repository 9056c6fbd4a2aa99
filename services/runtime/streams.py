"""The JetStream streams of mailsync in one declarative table, and their idempotent declaration.

Every stream uses file storage and DiscardNew: when a limit is reached the publisher gets an error it can act on,
instead of the broker silently dropping never-consumed mail (reference/reliability.md, exp12). Work streams delete
what was acknowledged (R18); event streams that several services or the CRM read keep messages for a while.

Replicas come from the `stream_replicas` setting (1 on one server, 3 on the production cluster). A declaration
raises a stream's replica count but never lowers it: a stream that has more replicas than the setting asks for
(an operator raised it, or a service started with the local default) keeps them, and the service logs a warning
naming the setting. Lowering redundancy is an operator's decision (`nats stream edit --replicas`), never a side
effect of a rollout.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from services.runtime import subjects

DUPLICATE_WINDOW = dt.timedelta(minutes=10)
EVENT_RETENTION = dt.timedelta(days=7)
STREAM_MAX_BYTES = 1024**3
REPLICAS_VARIABLE = "MAILSYNC_STREAM_REPLICAS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """One stream: its name, subjects and retention (work queue or limits with a maximum age)."""

    name: str
    subjects: tuple[str, ...]
    description: str
    work_queue: bool
    max_age: dt.timedelta | None = None
    max_msgs_per_subject: int = -1
    max_bytes: int = STREAM_MAX_BYTES

    def config(self, replicas: int = 1) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy.WORK_QUEUE if self.work_queue else RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # DiscardNew applies to the stream-wide limits; the per-subject limit of the work stream still
            # replaces the older item of a mailbox (discard_new_per_subject stays off), which is the coalescing.
            discard=DiscardPolicy.NEW,
            max_bytes=self.max_bytes,
            max_age=self.max_age.total_seconds() if self.max_age else None,
            max_msgs_per_subject=self.max_msgs_per_subject,
            duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            num_replicas=replicas,
        )


WORK = StreamSpec(
    name="MAILSYNC_WORK",
    subjects=(subjects.MAILBOX_CHANGED_ALL,),
    description="Per-mailbox sync work items; only the latest item of a mailbox is kept, so push bursts coalesce.",
    work_queue=True,
    max_msgs_per_subject=1,
)
MESSAGES = StreamSpec(
    name="MAILSYNC_MESSAGES",
    subjects=(subjects.NORMALIZED_ALL, subjects.MESSAGE_CHANGED_ALL),
    description="Normalized and changed messages on their way to threading; deleted once acknowledged (R18).",
    work_queue=True,
)
SENDS = StreamSpec(
    name="MAILSYNC_SENDS",
    subjects=(subjects.SEND_PENDING_ALL, subjects.SEND_SENT_ALL, subjects.SEND_FAILED_ALL),
    description="Outbound send lifecycle (pending, sent, failed) for threading; deleted once acknowledged.",
    work_queue=True,
)
CONNECTIONS = StreamSpec(
    name="MAILSYNC_CONNECTIONS",
    subjects=(subjects.CONNECTION_ALL,),
    description="Connection life-cycle events, read by several services; kept for a week.",
    work_queue=False,
    max_age=EVENT_RETENTION,
)
CONTACTS = StreamSpec(
    name="MAILSYNC_CONTACTS",
    subjects=(subjects.CONTACT_CREATED_ALL,),
    description="Contacts the sync created, for the CRM; kept for a week.",
    work_queue=False,
    max_age=EVENT_RETENTION,
)
SYNCED = StreamSpec(
    name="MAILSYNC_SYNCED",
    subjects=(subjects.MESSAGE_SYNCED_ALL,),
    description="Messages placed in a conversation, for the CRM; kept for a week.",
    work_queue=False,
    max_age=EVENT_RETENTION,
)

ALL_STREAMS: tuple[StreamSpec, ...] = (WORK, MESSAGES, SENDS, CONNECTIONS, CONTACTS, SYNCED)


async def declare_streams(
    js: JetStreamContext, streams: tuple[StreamSpec, ...] = ALL_STREAMS, *, replicas: int = 1
) -> None:
    """Creates each stream, or updates it to the declared configuration; safe to run on every start."""
    for spec in streams:
        await declare_stream(js, spec, replicas=replicas)


async def declare_stream(js: JetStreamContext, spec: StreamSpec, *, replicas: int = 1) -> None:
    config = spec.config(replicas)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    existing = info.config.num_replicas or 1
    if existing > replicas:
        log.warning(
            "stream keeps its higher replica count: a declaration never lowers redundancy",
            extra={
                "stream": spec.name,
                "replicas": existing,
                "requested": replicas,
                "setting": REPLICAS_VARIABLE,
                "hint": "set the setting to the stream's count, or lower it on purpose with "
                "`nats stream edit --replicas`",
            },
        )
        config = replace(config, num_replicas=existing)
    # Updating to an identical configuration is a no-op on the server; a changed retention is refused by
    # NATS with an error that names the stream, which is the right failure at startup. Raising the replica
    # count is done by the server in the background (it copies the stream to the new peers).
    await js.update_stream(config)
