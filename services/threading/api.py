"""The threading gRPC servicer: proto in, store or sync call, proto out. Every call is scoped to a location the
caller's token names (the runtime's tenant interceptor checks `location_id`; calls that carry the location
elsewhere check it here), and another location's ids find nothing, so their existence never leaks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from mailsync.v1 import threading_pb2, threading_pb2_grpc
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.grpc_auth import current_caller
from services.runtime.validation import decode_page_token, encode_page_token, page_size, required
from services.threading import codec
from services.threading.blobs import BlobNotFound, BlobStore
from services.threading.store import reads
from services.threading.store.attachments import stored_attachment
from services.threading.store.contacts import delete_contact, get_contact, list_contacts, upsert_contact

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class SyncedFeedSignal:
    """Wakes this process's WatchMessages streams of the locations where a committed batch placed messages (once
    per batch); a stream of another location is not woken, so it reads nothing. Placements by other replicas are
    found by the stream's poll."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, locations: Iterable[str]) -> None:
        for location in locations:
            event = self._events.pop(location, None)
            if event is not None:
                event.set()

    def waiter(self, location: str) -> asyncio.Event:
        """The event the next notification of `location` sets; take it before reading, so none is missed."""
        event = self._events.get(location)
        if event is None:
            event = self._events[location] = asyncio.Event()
        return event


async def _wait(event: asyncio.Event, at_most_seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=at_most_seconds)


class ContactMissing(NotFound):
    reason = "CONTACT_NOT_FOUND"


def _location(location_id: str, field: str = "location_id") -> str:
    required(location_id, field, "name the location")
    current_caller().require_location(location_id)
    return location_id


def _page_size(requested: int) -> int:
    return page_size(requested, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def _encode_token(when: dt.datetime, last_id: str) -> str:
    return encode_page_token([when.isoformat(), last_id])


def _decode_token(token: str) -> tuple[dt.datetime, str] | None:
    parts = decode_page_token(token, parts=2)
    if parts is None:
        return None
    try:
        when = dt.datetime.fromisoformat(parts[0])
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidArgument(
            "page_token is not one this service issued: pass next_page_token unchanged", field="page_token"
        )
    return when, parts[1]


class ThreadingServicer(threading_pb2_grpc.ThreadingServiceServicer):
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        clock: Clock | None = None,
        feed_signal: SyncedFeedSignal | None = None,
        watch_poll_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._clock = clock or SystemClock()
        self._feed_signal = feed_signal or SyncedFeedSignal()
        self._watch_poll_seconds = watch_poll_seconds

    async def UpsertContact(self, request: threading_pb2.UpsertContactRequest, context: Any) -> Any:
        contact = request.contact
        _location(contact.location_id, "contact.location_id")
        required(contact.contact_id, "contact.contact_id", "set the CRM contact id")
        record = codec.contact_record_of(contact, now=self._clock.now())
        async with self._db.write() as session:
            applied = await upsert_contact(session, record, now=self._clock.now())
            stored = await get_contact(session, record.location_id, record.contact_id)
        assert stored is not None
        return threading_pb2.UpsertContactResponse(contact=codec.contact_proto(stored), applied=applied)

    async def DeleteContact(self, request: threading_pb2.DeleteContactRequest, context: Any) -> Any:
        location = _location(request.location_id)
        required(request.contact_id, "contact_id", "name the contact to delete")
        async with self._db.write() as session:
            applied = await delete_contact(
                session, location, request.contact_id, request.version, now=self._clock.now()
            )
        return threading_pb2.DeleteContactResponse(applied=applied)

    async def ListContacts(self, request: threading_pb2.ListContactsRequest, context: Any) -> Any:
        location = _location(request.location_id)
        size = _page_size(request.page_size)
        async with self._db.read() as session:
            found = await list_contacts(
                session,
                location,
                email=request.email,
                limit=size + 1,
                after=_decode_token(request.page_token),
            )
        page, more = found[:size], len(found) > size
        token = _encode_token(page[-1].create_time, page[-1].contact_id) if more else ""
        return threading_pb2.ListContactsResponse(
            contacts=[codec.contact_proto(c) for c in page], next_page_token=token
        )

    async def ListConversations(self, request: threading_pb2.ListConversationsRequest, context: Any) -> Any:
        location = _location(request.location_id)
        size = _page_size(request.page_size)
        async with self._db.read() as session:
            # A contact this location never had is an error, not an empty list (another location's looks alike).
            if request.contact_id and await get_contact(session, location, request.contact_id) is None:
                raise ContactMissing(
                    f"no contact {request.contact_id} in location {location}", contact_id=request.contact_id
                )
            found = await reads.list_conversations(
                session,
                location,
                contact_id=request.contact_id,
                limit=size + 1,
                after=_decode_token(request.page_token),
            )
        page, more = found[:size], len(found) > size
        token = _encode_token(page[-1].last_message_time, page[-1].conversation_id) if more else ""
        return threading_pb2.ListConversationsResponse(
            conversations=[codec.conversation_proto(c) for c in page], next_page_token=token
        )

    async def GetConversation(self, request: threading_pb2.GetConversationRequest, context: Any) -> Any:
        location = _location(request.location_id)
        async with self._db.read() as session:
            found = await reads.get_conversation(session, location, request.conversation_id)
        if found is None:
            raise NotFound("no such conversation in this location", conversation_id=request.conversation_id)
        return threading_pb2.GetConversationResponse(conversation=codec.conversation_proto(found))

    async def ListMessages(self, request: threading_pb2.ListMessagesRequest, context: Any) -> Any:
        location = _location(request.location_id)
        if bool(request.conversation_id) == bool(request.thread_id):
            raise InvalidArgument(
                "give exactly one of conversation_id and thread_id", field="conversation_id"
            )
        size = _page_size(request.page_size)
        after = _decode_token(request.page_token)
        async with self._db.read() as session:
            if request.conversation_id:
                if await reads.get_conversation(session, location, request.conversation_id) is None:
                    raise NotFound(
                        "no such conversation in this location", conversation_id=request.conversation_id
                    )
            elif not await reads.thread_in_location(session, location, request.thread_id):
                raise NotFound("no such thread in this location", thread_id=request.thread_id)
            found = await reads.list_messages(
                session,
                location,
                conversation_id=request.conversation_id,
                thread_id=request.thread_id,
                limit=size + 1,
                after=after,
            )
        page, more = found[:size], len(found) > size
        token = _encode_token(page[-1].message_time, page[-1].message_id) if more else ""
        return threading_pb2.ListMessagesResponse(
            messages=[codec.message_proto(m) for m in page], next_page_token=token
        )

    async def GetMessage(self, request: threading_pb2.GetMessageRequest, context: Any) -> Any:
        location = _location(request.location_id)
        async with self._db.read() as session:
            found = await reads.get_message(session, location, request.message_id)
        if found is None:
            raise NotFound("no such message in this location", message_id=request.message_id)
        return threading_pb2.GetMessageResponse(message=codec.message_proto(found))

    async def GetAttachment(
        self, request: threading_pb2.GetAttachmentRequest, context: Any
    ) -> AsyncIterator[threading_pb2.GetAttachmentResponse]:
        location = _location(request.location_id)
        async with self._db.read() as session:
            found = await stored_attachment(session, location, request.message_id, request.attachment_id)
        if found is None:
            raise NotFound("no such attachment in this location", attachment_id=request.attachment_id)
        if found.unavailable_reason and not found.blob_sha256:
            raise FailedPrecondition(
                f"the attachment's content will never be available: {found.unavailable_reason}",
                attachment_id=request.attachment_id,
                retry="never",
            )
        if not found.blob_sha256 or not await self._blobs.exists(found.blob_sha256):
            raise FailedPrecondition("the attachment's content has not been fetched yet; retry later")
        yield threading_pb2.GetAttachmentResponse(
            metadata=threading_pb2.GetAttachmentResponse.Metadata(
                filename=found.filename,
                content_type=found.content_type,
                size_bytes=found.size_bytes,
                sha256=found.blob_sha256,
            )
        )
        try:
            async for chunk in self._blobs.read(found.blob_sha256):
                yield threading_pb2.GetAttachmentResponse(chunk=chunk)
        except BlobNotFound:
            raise FailedPrecondition("the attachment's content is missing from the blob store") from None

    async def WatchMessages(
        self, request: threading_pb2.WatchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[threading_pb2.WatchMessagesResponse]:
        location = _location(request.location_id)
        if request.after_cursor:
            # The edge already refused anything but a decimal number that fits the feed's 64-bit sequence.
            cursor = int(request.after_cursor)
        else:
            async with self._db.read() as session:
                cursor = await reads.last_feed_seq(session, location)
        # The subscription is live from here: a client sees the headers at once, not with the first message.
        await context.send_initial_metadata(())
        while True:
            placed = self._feed_signal.waiter(location)
            async with self._db.read() as session:
                entries = await reads.feed_after(session, location, cursor, limit=200)
            for entry in entries:
                yield codec.feed_entry_proto(entry)
                cursor = entry.seq
            if not entries:
                await _wait(placed, self._watch_poll_seconds)

    async def ListRefusedDrops(self, request: threading_pb2.ListRefusedDropsRequest, context: Any) -> Any:
        location = _location(request.location_id)
        size = _page_size(request.page_size)
        async with self._db.read() as session:
            found = await reads.refused_drops(
                session, location, limit=size + 1, before=_decode_token(request.page_token)
            )
        page, more = found[:size], len(found) > size
        token = _encode_token(page[-1].decide_time, f"drop:{page[-1].drop_id}") if more else ""
        return threading_pb2.ListRefusedDropsResponse(
            refused_drops=[codec.refused_drop_proto(d) for d in page], next_page_token=token
        )

    async def ExplainMessage(self, request: threading_pb2.ExplainMessageRequest, context: Any) -> Any:
        caller = current_caller()
        if request.location_id:
            caller.require_location(request.location_id)
        if not request.rfc_message_id and not (request.mailbox_id and request.gmail_message_id):
            raise InvalidArgument(
                "give rfc_message_id, or mailbox_id with gmail_message_id", field="rfc_message_id"
            )
        async with self._db.read() as session:
            explanation = await reads.explain(
                session,
                visible_locations=None,
                rfc_message_id=request.rfc_message_id,
                mailbox_id=request.mailbox_id,
                gmail_message_id=request.gmail_message_id,
            )
        if explanation is not None:
            wanted = {request.location_id} if request.location_id else None
            visible = tuple(
                d
                for d in explanation.decisions
                if caller.may_access(d.location_id) and (wanted is None or d.location_id in wanted)
            )
            # The subject is the message's content: shown only to a caller of a location it synced into.
            subject = explanation.subject if any(d.synced for d in visible) else ""
            explanation = reads.Explanation(
                explanation.rfc_message_id, subject, explanation.participants, visible
            )
        if explanation is None or not explanation.decisions:
            raise NotFound("this service has no decision about that message that you may see")
        return codec.explanation_proto(explanation)
