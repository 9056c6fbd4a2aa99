"""Reading header fields of a parsed message defensively: every failure becomes a defect and a fallback value."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from email.message import Message

from services.ingest.domain.mime_words import decode_encoded_words

_FOLD = re.compile(r"\r\n|\r|\n")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_BARE_MESSAGE_ID = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Both patterns are linear: hostile headers are long runs of exactly these characters.
_LINE_BREAKS = re.compile(r"[\r\n]+")
_WHITESPACE_RUN = re.compile(r"[ \t]+")


def clean_text(text: str) -> str:
    """Make `text` safe to publish: valid UTF-8 (undecodable bytes become U+FFFD) and no control characters."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", text)


def clean_header_text(text: str) -> str:
    """A header value on one line: folding and smuggled line breaks collapse to one space."""
    text = _LINE_BREAKS.sub(" ", clean_text(text))
    return _WHITESPACE_RUN.sub(" ", text).strip()


def raw_values(message: Message, name: str) -> list[str]:
    """The unparsed values of every `name` field, in order (no header parser involved)."""
    wanted = name.lower()
    return [str(value) for key, value in message.raw_items() if key.lower() == wanted]


def decoded_value(name: str, value: str, defects: list[str]) -> str:
    """`value` with its encoded words (RFC 2047) decoded by their charsets, on one line (see mime_words)."""
    return clean_header_text(decode_encoded_words(_FOLD.sub("", value), defects, field=name.lower()))


def decoded_text(message: Message, name: str, defects: list[str]) -> str:
    """The first `name` field decoded (encoded words, bad charsets replaced), on one line."""
    values = raw_values(message, name)
    return decoded_value(name, values[0], defects) if values else ""


def message_ids(message: Message, name: str) -> list[str]:
    """Angle-bracketed ids of every `name` field in order, deduplicated (ids compare as opaque strings)."""
    ids: list[str] = []
    seen: set[str] = set()
    for value in raw_values(message, name):
        value = clean_text(value)
        matches = _MESSAGE_ID.findall(value)
        if not matches and _BARE_MESSAGE_ID.match(value.strip()):
            matches = [f"<{value.strip()}>"]
        for message_id in matches:
            if message_id not in seen:
                seen.add(message_id)
                ids.append(message_id)
    return ids


def header_date(message: Message, defects: list[str]) -> dt.datetime | None:
    """The Date field as an aware UTC datetime; an unreadable date is a defect, not an error."""
    raw = raw_values(message, "date")
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(clean_header_text(raw[0]))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        # Year 9999 with a negative offset is beyond datetime's range in UTC (OverflowError).
        return when.astimezone(dt.UTC)
    except Exception:  # any malformed or out-of-range date, whatever the stdlib raises for it
        defects.append("header_date_unparseable")
        return None
