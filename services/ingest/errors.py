"""Ingest's domain errors; the shared interceptor maps them to gRPC status codes."""

from __future__ import annotations

from services.runtime.errors import DependencyUnavailable, InvalidArgument, NotFound, Unauthenticated


class PushNotAuthenticated(Unauthenticated):
    reason = "PUSH_NOT_AUTHENTICATED"


class PushMalformed(InvalidArgument):
    reason = "PUSH_MALFORMED"


class MailboxNotInLocation(NotFound):
    """The mailbox is unknown, or not connected in the caller's location (the two are not told apart)."""

    reason = "MAILBOX_NOT_FOUND"


class QueueUnavailable(DependencyUnavailable):
    reason = "QUEUE_UNAVAILABLE"
