"""Gmail as outbound uses it: a client per mailbox authorised by the auth service, the Message-ID Gmail really
kept on a sent message, and the Sent-folder search that decides whether a send of unknown outcome went out.

The search lists every Sent message of the send's window (services.outbound.domain.send_state.SearchWindow), all
pages, and reads the product's send id header of each one it does not already know: whatever Gmail did to the
Message-ID, and however many look-alikes (the same recipient and subject) were sent around it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.outbound.domain.send_state import (
    SEND_ID_HEADER,
    GmailIds,
    SearchWindow,
    SentCopy,
    find_sent_copy,
)
from services.runtime.gmail import GmailApi, GmailClient, GmailError, GmailNotFound, RetryPolicy

log = logging.getLogger(__name__)

_SEARCH_HEADERS = (SEND_ID_HEADER, "Message-ID")


class SentFolderUnreadable(Exception):
    """The Sent folder could not be searched now; the send's outcome stays unknown."""


class GmailMailboxes:
    """Makes the Gmail client of a mailbox; every client shares one API handle and its thread pool."""

    def __init__(
        self,
        api: GmailApi,
        access_token: Callable[[str], Awaitable[str]],
        *,
        policy: RetryPolicy | None = None,
        forget_token: Callable[[str, str], None] | None = None,
    ) -> None:
        self._api = api
        self._access_token = access_token
        self._policy = policy
        # Told (mailbox id, token) when Gmail refuses a token, so the retry asks auth for a new one.
        self._forget_token = forget_token

    def client_for(self, mailbox_id: str) -> GmailClient:
        async def token() -> str:
            return await self._access_token(mailbox_id)

        forget = self._forget_token
        rejected = (lambda refused: forget(mailbox_id, refused)) if forget is not None else None
        return GmailClient(self._api, token, policy=self._policy, on_token_rejected=rejected)


def _header(message: dict[str, Any], name: str) -> str:
    for header in message.get("payload", {}).get("headers", []):
        if str(header.get("name", "")).lower() == name.lower():
            return str(header.get("value", ""))
    return ""


@dataclass(frozen=True)
class KeptMessageId:
    value: str
    # False when the Sent copy could not be read yet (ours is used until the recovery loop reads Gmail's).
    confirmed: bool


async def kept_message_id(client: GmailClient, gmail_message_id: str, ours: str) -> KeptMessageId:
    """The Message-ID Gmail stored on the sent copy (Gmail may replace ours); ours, unconfirmed, when the copy
    cannot be read yet (Gmail may show the Sent copy only after messages.send answered)."""
    try:
        message = await client.get_message(
            gmail_message_id, format="metadata", metadata_headers=["Message-ID"]
        )
    except GmailError as error:
        level = logging.INFO if isinstance(error, GmailNotFound) else logging.WARNING
        log.log(
            level,
            "the sent message's Message-ID is not readable yet; it is read again later",
            extra={"gmail_message_id": gmail_message_id, "reason": str(error)},
        )
        return KeptMessageId(ours, confirmed=False)
    return KeptMessageId(_header(message, "Message-ID").strip() or ours, confirmed=True)


def _copy(message: dict[str, Any]) -> SentCopy:
    return SentCopy(
        gmail=GmailIds(message_id=message["id"], thread_id=message.get("threadId", "")),
        rfc_message_id=_header(message, "Message-ID"),
        send_id=_header(message, SEND_ID_HEADER),
    )


async def find_in_sent_folder(
    client: GmailClient,
    *,
    send_id: str,
    rfc_message_id: str,
    window: SearchWindow,
    already_claimed: Callable[[list[str]], Awaitable[set[str]]],
) -> SentCopy | None:
    """Our message in the mailbox's Sent folder, or None when the window holds no copy of it.

    `already_claimed` names the listed messages other sends already own (they are not read again). Raises
    SentFolderUnreadable when Gmail cannot be asked (the answer is then unknown, not "absent").
    """
    try:
        listed: dict[str, None] = {}
        for query in window.queries(rfc_message_id):
            for stub in await client.list_messages(query):
                listed[stub["id"]] = None
        claimed = await already_claimed(list(listed))
        unread = [gmail_id for gmail_id in listed if gmail_id not in claimed]
        if not unread:
            return None
        batch = await client.get_messages(unread, format="metadata", metadata_headers=_SEARCH_HEADERS)
    except GmailError as error:
        raise SentFolderUnreadable(str(error)) from error
    if batch.failed:
        raise SentFolderUnreadable(f"{len(batch.failed)} Sent-folder messages could not be read")
    copies = [_copy(message) for message in batch.messages.values()]
    found = find_sent_copy(copies, send_id=send_id, rfc_message_id=rfc_message_id)
    duplicates = [c.gmail.message_id for c in copies if c.send_id == send_id and found and c != found]
    if duplicates:
        log.error(
            "the send is in the Sent folder more than once",
            extra={"send_id": send_id, "kept": found.gmail.message_id if found else "", "others": duplicates},
        )
    return found
