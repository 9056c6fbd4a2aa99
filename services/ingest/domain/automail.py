"""Flags for automatic and list mail (RFC 3834, RFC 2369/2919), so nothing auto-acts on it or loops."""

from __future__ import annotations

import re
from email.message import Message

from services.ingest.domain.mime_headers import clean_header_text, raw_values

_LIST_FIELDS = (
    "list-id",
    "list-unsubscribe",
    "list-post",
    "list-help",
    "list-subscribe",
    "list-owner",
    "list-archive",
)
_ROBOT_SENDER = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply)([+.\-_@]|$)", re.IGNORECASE)
_NULL_PATH = re.compile(r"^<\s*>$")


def _first(message: Message, name: str) -> str:
    values = raw_values(message, name)
    return clean_header_text(values[0]).lower() if values else ""


def is_list_mail(message: Message) -> bool:
    """True for mailing-list traffic: any RFC 2369/2919 List-* field, or `Precedence: list`."""
    if any(raw_values(message, name) for name in _LIST_FIELDS):
        return True
    return _first(message, "precedence") == "list"


def is_auto_submitted(message: Message, from_email: str) -> bool:
    """True for machine-sent mail: auto-replies, notifications, bounces and bulk, by the RFC 3834 heuristics."""
    auto_submitted = _first(message, "auto-submitted")
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    if _first(message, "precedence") in ("bulk", "junk"):
        return True
    suppress = _first(message, "x-auto-response-suppress")
    if any(token.strip() in ("all", "oof") for token in suppress.split(",")):
        return True
    if _first(message, "content-type").startswith("multipart/report"):
        return True
    if any(_NULL_PATH.match(clean_header_text(value)) for value in raw_values(message, "return-path")):
        return True
    return bool(_ROBOT_SENDER.match(from_email))
