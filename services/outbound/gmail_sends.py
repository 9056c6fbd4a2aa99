"""Gmail as outbound uses it: a client per mailbox authorised by the auth service, the Message-ID Gmail really
kept on a sent message, and the Sent-folder search that decides whether a send of unknown outcome went out."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from services.outbound.domain.send_state import GmailIds, SentCopy, find_sent_copy, sent_folder_queries
from services.runtime.gmail import GmailApi, GmailClient, GmailError, RetryPolicy

log = logging.getLogger(__name__)

_SEARCH_HEADERS = ("Message-ID", "To", "Cc", "Bcc", "Subject", "Date")
# Copies looked at per query: a mailbox sends at most a few hundred messages a day to one recipient.
_SEARCH_LIMIT = 50


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
    ) -> None:
        self._api = api
        self._access_token = access_token
        self._policy = policy

    def client_for(self, mailbox_id: str) -> GmailClient:
        async def token() -> str:
            return await self._access_token(mailbox_id)

        return GmailClient(self._api, token, policy=self._policy)


def _header(message: dict[str, Any], name: str) -> str:
    for header in message.get("payload", {}).get("headers", []):
        if str(header.get("name", "")).lower() == name.lower():
            return str(header.get("value", ""))
    return ""


def _decoded(value: str) -> str:
    try:
        return " ".join(str(make_header(decode_header(value))).split())
    except (ValueError, LookupError):
        return " ".join(value.split())


async def kept_message_id(client: GmailClient, gmail_message_id: str, ours: str) -> str:
    """The Message-ID Gmail stored on the sent copy (Gmail may replace ours); ours when it cannot be read."""
    try:
        message = await client.get_message(
            gmail_message_id, format="metadata", metadata_headers=["Message-ID"]
        )
    except GmailError as error:
        log.warning("cannot read the sent message's Message-ID", extra={"reason": str(error)})
        return ours
    return _header(message, "Message-ID").strip() or ours


def _copy(message: dict[str, Any]) -> SentCopy:
    recipients = frozenset(
        address.lower()
        for _, address in getaddresses([_header(message, name) for name in ("To", "Cc", "Bcc")])
        if address
    )
    try:
        date: dt.datetime | None = parsedate_to_datetime(_header(message, "Date"))
    except (TypeError, ValueError):
        date = None
    return SentCopy(
        gmail=GmailIds(message_id=message["id"], thread_id=message.get("threadId", "")),
        rfc_message_id=_header(message, "Message-ID"),
        recipients=recipients,
        subject=_decoded(_header(message, "Subject")),
        date=date,
    )


async def find_in_sent_folder(
    client: GmailClient,
    *,
    rfc_message_id: str,
    recipients: Sequence[str],
    subject: str,
    date: dt.datetime,
) -> SentCopy | None:
    """Our message in the mailbox's Sent folder, or None when it is certainly not there.

    Raises SentFolderUnreadable when Gmail cannot be asked (the answer is then unknown, not "absent").
    """
    try:
        found: dict[str, None] = {}
        for query in sent_folder_queries(rfc_message_id, recipients, date):
            for stub in await client.list_messages(query, limit=_SEARCH_LIMIT):
                found[stub["id"]] = None
        if not found:
            return None
        batch = await client.get_messages(list(found), format="metadata", metadata_headers=_SEARCH_HEADERS)
    except GmailError as error:
        raise SentFolderUnreadable(str(error)) from error
    if batch.failed:
        raise SentFolderUnreadable(f"{len(batch.failed)} Sent-folder messages could not be read")
    copies = [_copy(message) for message in batch.messages.values()]
    return find_sent_copy(
        copies, rfc_message_id=rfc_message_id, recipients=recipients, subject=subject, date=date
    )
