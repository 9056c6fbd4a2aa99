"""BCC drops in the running service (R9): the per-location addresses, the drop log, and handing an accepted drop
over to threading.

Addresses: the token is kept in the database (GetBccAddress must show the address again, and a one-way digest
cannot), next to its SHA-256 digest, which is what a drop is looked up by, so that lookups never compare the
secret itself. A stolen token alone logs nothing: the sender must still be an authenticated user of the location.

Hand-over: an accepted drop's log line, its content (only when it has attachments, for FetchAttachment, as long as
drop_retention says) and its NormalizedMessage (on the transactional outbox, `Nats-Msg-Id` =
`drop:<location>:<content digest>`) are written in one transaction, and the SMTP 250 / RPC answer is given only
after that commit: the drop is then durable, and the outbox relay publishes it. A refused drop gets a log line with
the reason and, in the same transaction, a NormalizedMessage with `bcc_drop.refusal_reason` and only ids and
addresses from its header (R18), so threading records the refusal for ListRefusedDrops and ExplainMessage (R16),
whatever stage refused it: the SMTP session (size, line length, header size) or the R9 checks. A drop for an
address that is not a location's current one (refused at RCPT over SMTP) names no location to explain to, so it is
not logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from mailsync.v1 import common_pb2
from services.ingest import store
from services.ingest.bcc_drop import AcceptedDrop, DropLocation
from services.ingest.domain.bcc import (
    DropRefused,
    drop_address,
    new_drop_token,
    token_digest,
)
from services.ingest.drop_retention import DropRetention
from services.ingest.message_proto import (
    bcc_drop_event,
    drop_msg_id,
    drop_subject,
    refused_drop_event,
    refused_drop_msg_id,
)
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.instruments import instruments
from services.runtime.outbox import stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BccAddressView:
    location_id: str
    address: str
    created_at: dt.datetime


class BccAddresses:
    """GetBccAddress / RotateBccAddress, and the admission's DropLocations port."""

    def __init__(self, db: Database, drop_domain: str, *, clock: Clock | None = None) -> None:
        self._db = db
        self._drop_domain = drop_domain
        self._clock = clock or SystemClock()

    async def get(self, location_id: str) -> BccAddressView:
        """The location's address, created on first use."""
        async with self._db.read() as session:
            existing = await store.get_bcc_address(session, location_id)
        if existing is not None:
            return self._view(existing)
        token = new_drop_token()
        async with self._db.write() as session:
            created = await store.create_bcc_address(
                session, location_id, token, token_digest(token), now=self._clock.now()
            )
        return self._view(created)

    async def rotate(self, location_id: str) -> BccAddressView:
        """A new token; the old address is refused from the commit on."""
        token = new_drop_token()
        async with self._db.write() as session:
            replaced = await store.replace_bcc_token(
                session, location_id, token, token_digest(token), now=self._clock.now()
            )
        log.info("bcc address of location %s rotated", location_id)
        return self._view(replaced)

    async def location_for_token_digest(self, digest: str) -> DropLocation | None:
        async with self._db.read() as session:
            location_id = await store.bcc_location_for_digest(session, digest)
        return None if location_id is None else DropLocation(location_id, digest)

    def _view(self, address: store.BccAddress) -> BccAddressView:
        return BccAddressView(
            address.location_id, drop_address(address.token, self._drop_domain), address.created_at
        )


class OutboxDropSink:
    """The admission's DropSink: log line, kept content and the event in one transaction (see module doc)."""

    def __init__(self, db: Database, *, retention: DropRetention, clock: Clock | None = None) -> None:
        self._db = db
        self._retention = retention
        self._clock = clock or SystemClock()

    async def accept_drop(self, drop: AcceptedDrop) -> None:
        now = self._clock.now()
        # Normalizing a drop of up to 25 MB is CPU work: off the event loop.
        event = await asyncio.to_thread(bcc_drop_event, drop, observe_time=now)
        async with self._db.write() as session:
            await store.log_drop(
                session,
                drop_id=drop.drop_id,
                location_id=drop.location_id,
                content_digest=drop.content_digest,
                rfc_message_id=event.rfc_message_id,
                sender=drop.author.email,
                accepted=True,
                reason=f"accepted: {drop.author.method} for {drop.author.authenticated_domain}",
                now=now,
            )
            if event.attachments:
                # Threading fetches attachments only; a drop without any keeps no content at all (R18).
                await store.keep_drop_content(
                    session, drop.drop_id, drop.raw, expires_at=self._retention.first_expiry(now)
                )
            await stage(
                session,
                drop_subject(drop.location_id),
                event,
                drop_msg_id(drop.location_id, drop.content_digest),
                clock=self._clock,
            )
        instruments().messages_normalized.add(1, {"mailsync.source": "bcc_drop"})


class DropLog:
    """The admission's RefusalLog: the drop log line (R16) and the refused drop's event for threading, which
    records the refusal so ListRefusedDrops and ExplainMessage show it; both in one transaction."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    async def log_refusal(
        self,
        location_id: str,
        head: bytes,
        envelope_sender: str,
        refused: DropRefused,
        *,
        size: int,
        content_digest: str,
    ) -> None:
        now = self._clock.now()
        drop_id = uuid.uuid4().hex
        reason = f"{refused.reason.value}: {refused.explanation}"
        # Reading the header never raises (what cannot be read becomes a defect), and it is work off the loop.
        event = await asyncio.to_thread(
            refused_drop_event,
            head,
            drop_id=drop_id,
            location_id=location_id,
            refusal_reason=reason,
            content_digest=content_digest,
            size_bytes=size,
            observe_time=now,
        )
        author = next(
            (p.email for p in event.participants if p.role == common_pb2.PARTICIPANT_ROLE_FROM),
            envelope_sender,
        )
        async with self._db.write() as session:
            await store.log_drop(
                session,
                drop_id=drop_id,
                location_id=location_id,
                content_digest=content_digest,
                rfc_message_id=event.rfc_message_id[:998],
                sender=author[:320],
                accepted=False,
                reason=f"{reason} ({size} bytes)",
                now=now,
            )
            await stage(
                session,
                drop_subject(location_id),
                event,
                refused_drop_msg_id(location_id, drop_id),
                clock=self._clock,
            )
