"""Admitting BCC drops (R9): the domain's checks run in order against the ports that know locations and users.

Used by the SMTP listener (recipient checked at RCPT time, the rest on DATA) and by the SubmitBccDrop RPC.
Nothing is handed on unless every check passed; every refusal is a `DropRefused` with its reason, and every
refusal for a current drop address, whichever stage decided it, goes to the refusal log (R16).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

from services.ingest.domain.bcc import (
    AuthenticatedAuthor,
    DnsTxtLookup,
    DropPolicy,
    DropRefused,
    check_author,
    check_sender_is_user,
    check_size,
    check_token,
    drop_token_of,
    token_digest,
)
from services.runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DropLocation:
    location_id: str
    # SHA-256 of the location's current token (see domain.bcc.token_digest).
    token_digest: str


class DropLocations(Protocol):
    async def location_for_token_digest(self, digest: str) -> DropLocation | None:
        """The location whose current BCC token has this digest (none once the token was rotated)."""
        ...


class LocationUsers(Protocol):
    async def user_for_address(self, location_id: str, email: str) -> str | None:
        """The user of the location whose CRM or connected mailbox address is `email` (auth's ListUsers)."""
        ...


@dataclass(frozen=True)
class AcceptedDrop:
    drop_id: str
    location_id: str
    sender_user_id: str
    envelope_recipient: str
    author: AuthenticatedAuthor
    # Hex SHA-256 of the raw message (the R15 key of a drop without a Message-ID).
    content_digest: str
    raw: bytes


class DropSink(Protocol):
    async def accept_drop(self, drop: AcceptedDrop) -> None:
        """Take an admitted drop over durably (normalize and publish it); raising refuses it temporarily."""
        ...


class RefusalLog(Protocol):
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
        """Records one refused drop of the location (from its first bytes: ids and addresses, never content)."""
        ...


def _content_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class BccDropAdmission:
    def __init__(
        self,
        *,
        policy: DropPolicy,
        locations: DropLocations,
        users: LocationUsers,
        sink: DropSink,
        dns_txt: DnsTxtLookup | None = None,
        clock: Clock | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.policy = policy
        self._locations = locations
        self._users = users
        self._sink = sink
        self._dns_txt = dns_txt
        self._clock = clock or SystemClock()
        self._refusals = refusals

    async def location_for_recipient(self, envelope_recipient: str) -> str:
        """The location a drop address belongs to; refuses unknown, malformed and rotated-out addresses."""
        token = drop_token_of(envelope_recipient, self.policy.drop_domain)
        location = await self._locations.location_for_token_digest(token_digest(token))
        if location is None:
            check_token(token, None)  # refuses: no location has this token (any more)
            raise AssertionError("check_token accepted a token without a location")
        check_token(token, location.token_digest)
        return location.location_id

    async def log_refusal(
        self,
        envelope_recipient: str,
        head: bytes,
        envelope_sender: str,
        refused: DropRefused,
        *,
        size: int,
        content_digest: str = "",
    ) -> None:
        """Log a refusal (R16): also one the SMTP session decided before the drop was complete (then there is no
        content digest). A drop for an address that is no current drop address names no location: not logged."""
        if self._refusals is None:
            return
        try:
            location_id = await self.location_for_recipient(envelope_recipient)
        except DropRefused:
            return
        await self._refusals.log_refusal(
            location_id, head, envelope_sender, refused, size=size, content_digest=content_digest
        )

    async def admit(self, envelope_recipient: str, raw: bytes, *, envelope_sender: str = "") -> AcceptedDrop:
        """Run every R9 check on one drop and hand it to the sink; raises DropRefused with the reason (logged)."""
        # Hashing up to 25 MB, like the checks below, is work for a worker thread, not the event loop.
        digest = asyncio.create_task(asyncio.to_thread(_content_digest, raw))
        try:
            check_size(len(raw), self.policy)
            location_id = await self.location_for_recipient(envelope_recipient)
            # DKIM verification may query DNS: it runs off the event loop.
            author = await asyncio.to_thread(check_author, raw, self.policy, self._clock.now(), self._dns_txt)
            user_id = check_sender_is_user(
                author, await self._users.user_for_address(location_id, author.email)
            )
        except DropRefused as refused:
            log.info("bcc drop refused: %s: %s", refused.reason.value, refused.explanation)
            await self.log_refusal(
                envelope_recipient,
                raw,
                envelope_sender,
                refused,
                size=len(raw),
                content_digest=await digest,
            )
            raise
        drop = AcceptedDrop(
            drop_id=uuid.uuid4().hex,
            location_id=location_id,
            sender_user_id=user_id,
            envelope_recipient=envelope_recipient,
            author=author,
            content_digest=await digest,
            raw=raw,
        )
        await self._sink.accept_drop(drop)
        log.info("bcc drop %s accepted for location %s from user %s", drop.drop_id, location_id, user_id)
        return drop
