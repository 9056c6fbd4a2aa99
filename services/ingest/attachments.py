"""Where FetchAttachment's content comes from: the raw Gmail message (fetched again, ingest keeps no copy) or the
kept content of an accepted BCC drop, and the attachment cut out of it by its MIME part path.

Only messages ingest published are served (the ledger says so), so the method cannot be used to read arbitrary
mail of a connected mailbox. Every answer that is not content says whether it ever will be: NOT_FOUND for what
will never be served (a message gone from Gmail, a drop whose content is not kept, a part path the normalizer never
described as an attachment), FAILED_PRECONDITION until a dead grant is renewed, UNAVAILABLE for a Gmail outage and
for a message the ledger does not hold (yet).

A message missing from the ledger is not final: a pass records its window's ledger entries after JetStream has
acknowledged the publishes, in the next transaction, and a pass that dies in between publishes the window again on
the next pass and records it then. Threading can place the message and ask for its attachment inside that gap (seen
under two concurrent test runs), so the answer tells it to come back rather than to give up.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from services.ingest import store
from services.ingest.domain.mime import attachment_content, normalize_message
from services.ingest.mailboxes import AccessTokens
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import DependencyUnavailable, FailedPrecondition, NotFound
from services.runtime.gmail import (
    GmailApi,
    GmailClient,
    GmailError,
    GmailNotFound,
    PermanentAuthFailure,
    RetryPolicy,
    decode_base64url,
)

CHUNK_BYTES = 256 * 1024


class AttachmentNotFound(NotFound):
    """The message, the drop or the part is unknown or gone."""

    reason = "ATTACHMENT_NOT_FOUND"


class MailboxNeedsReauth(FailedPrecondition):
    reason = "MAILBOX_REAUTH_REQUIRED"


class GmailUnavailable(DependencyUnavailable):
    reason = "GMAIL_UNAVAILABLE"


class MessageNotRecorded(DependencyUnavailable):
    """The ledger does not hold the message: not published, or published and not recorded yet (see module doc)."""

    reason = "MESSAGE_NOT_RECORDED"


@dataclass(frozen=True)
class AttachmentContent:
    filename: str
    content_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        for start in range(0, len(self.content), size):
            yield self.content[start : start + size]


def cut_attachment(raw: bytes, part_path: str) -> AttachmentContent | None:
    """The attachment at `part_path` with the name and type normalization gave it; None when there is none."""
    described = next((a for a in normalize_message(raw).attachments if a.part_path == part_path), None)
    content = attachment_content(raw, part_path) if described is not None else None
    if described is None or content is None:
        return None
    return AttachmentContent(described.filename, described.content_type, content)


class AttachmentSource:
    """Finds attachment content for FetchAttachment (see module doc)."""

    def __init__(
        self,
        *,
        db: Database,
        gmail_api: GmailApi,
        tokens: AccessTokens,
        gmail_policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        on_drop_fetched: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        # Told when a drop's attachment was served: only threading fetches, and only for drops it placed.
        self._on_drop_fetched = on_drop_fetched
        self._gmail_api = gmail_api
        self._tokens = tokens
        self._gmail_policy = gmail_policy
        self._clock = clock or SystemClock()

    async def from_gmail(self, mailbox_id: str, gmail_message_id: str, part_path: str) -> AttachmentContent:
        async with self._db.read() as session:
            published = await store.published_among(session, mailbox_id, [gmail_message_id])
        if gmail_message_id not in published:
            raise MessageNotRecorded(
                f"message {gmail_message_id!r} of mailbox {mailbox_id!r} is not recorded as published by ingest; a "
                "message just published is recorded within seconds, so retry with backoff",
                mailbox_id=mailbox_id,
                gmail_message_id=gmail_message_id,
            )

        async def token() -> str:
            return await self._tokens.access_token(mailbox_id)

        # A token Gmail refuses is named to auth on the retry, so a dead grant is seen at once (R12).
        def rejected(refused: str) -> None:
            self._tokens.forget_token(mailbox_id, refused)

        client = GmailClient(self._gmail_api, token, policy=self._gmail_policy, on_token_rejected=rejected)
        try:
            body = await client.get_message(gmail_message_id, format="raw")
        except GmailNotFound:
            raise AttachmentNotFound(
                f"message {gmail_message_id!r} is no longer in mailbox {mailbox_id!r}",
                mailbox_id=mailbox_id,
                gmail_message_id=gmail_message_id,
            ) from None
        except PermanentAuthFailure as error:
            raise MailboxNeedsReauth(
                f"mailbox {mailbox_id!r} must be reconnected before its attachments can be read",
                mailbox_id=mailbox_id,
            ) from error
        except GmailError as error:
            raise GmailUnavailable(f"Gmail did not answer: {type(error).__name__}") from error
        raw = decode_base64url(body.get("raw", ""))
        return await self._cut(raw, part_path, what=f"message {gmail_message_id!r}")

    async def from_drop(self, drop_id: str, part_path: str) -> AttachmentContent:
        async with self._db.read() as session:
            raw = await store.drop_content(session, drop_id, now=self._clock.now())
        if raw is None:
            raise AttachmentNotFound(
                f"BCC drop {drop_id!r} has no content kept: it is unknown, had no attachments, was not placed in a "
                "conversation, or its retention ended; it will never be available",
                drop_id=drop_id,
            )
        found = await self._cut(raw, part_path, what=f"BCC drop {drop_id!r}")
        if self._on_drop_fetched is not None:
            await self._on_drop_fetched(drop_id)
        return found

    async def _cut(self, raw: bytes, part_path: str, *, what: str) -> AttachmentContent:
        # Parsing a large message is CPU work: off the event loop.
        found = await asyncio.to_thread(cut_attachment, raw, part_path)
        if found is None:
            raise AttachmentNotFound(
                f"{what} has no attachment {part_path!r} (the path names no attachment its content can be cut "
                "from); it will never be available",
                attachment_id=part_path,
            )
        return found
