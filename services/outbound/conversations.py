"""The threading service as outbound's check that a reply's conversation and thread belong to the sender's
location: another location's ids are refused as NOT_FOUND before anything is sent (they name nothing there)."""

from __future__ import annotations

import grpc

from mailsync.v1 import threading_pb2, threading_pb2_grpc
from services.runtime.errors import DependencyUnavailable, NotFound


class ConversationNotInLocation(NotFound):
    reason = "CONVERSATION_NOT_FOUND"


class ThreadNotInLocation(NotFound):
    reason = "THREAD_NOT_FOUND"


class ThreadingConversations:
    """Asks threading (with the caller's location in every request) whether a conversation or thread is there."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 10.0) -> None:
        self._stub = threading_pb2_grpc.ThreadingServiceStub(channel)
        self._timeout = timeout_seconds

    async def require_in_location(self, location_id: str, conversation_id: str, thread_id: str) -> None:
        """Returns when every id given names something of the location; NOT_FOUND otherwise."""
        if conversation_id:
            await self._ask(
                self._stub.GetConversation(
                    threading_pb2.GetConversationRequest(
                        location_id=location_id, conversation_id=conversation_id
                    ),
                    timeout=self._timeout,
                ),
                ConversationNotInLocation(
                    f"no conversation {conversation_id} in location {location_id}: reply in one of its own",
                    field="conversation_id",
                ),
            )
        if thread_id:
            await self._ask(
                self._stub.ListMessages(
                    threading_pb2.ListMessagesRequest(
                        location_id=location_id, thread_id=thread_id, page_size=1
                    ),
                    timeout=self._timeout,
                ),
                ThreadNotInLocation(
                    f"no thread {thread_id} in location {location_id}: reply in one of its own",
                    field="thread_id",
                ),
            )

    @staticmethod
    async def _ask(call: object, missing: NotFound) -> None:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise missing from None
            raise DependencyUnavailable(
                f"threading could not confirm the reply's conversation ({error.code().name}): retry shortly"
            ) from None
