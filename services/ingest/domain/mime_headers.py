"""Reading header fields of a parsed message defensively: every failure becomes a defect and a fallback value."""

from __future__ import annotations

import codecs
import datetime as dt
import email.utils
import re
from collections.abc import Iterator
from email import policy
from email.message import Message

_MODERN = policy.default
_FOLD = re.compile(r"\r\n|\r|\n")
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_BARE_MESSAGE_ID = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]{1,64})")
# Decoders that are super-linear in their input (punycode, and idna which uses it): a hostile charset
# label must not turn a body or an encoded word into minutes of CPU.
_SLOW_CODECS = frozenset({"punycode", "idna"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Both patterns are linear: hostile headers are long runs of exactly these characters.
_LINE_BREAKS = re.compile(r"[\r\n]+")
_WHITESPACE_RUN = re.compile(r"[ \t]+")


def is_safe_charset(name: str) -> bool:
    """False for charsets whose decoder is slow on hostile input or that do not decode to text."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        return True  # unknown charsets are handled (replaced) by every decoding path
    except Exception:
        return False
    return info.name not in _SLOW_CODECS and getattr(info, "_is_text_encoding", True)


def _defused(value: str, defects: list[str]) -> str:
    """`value` with encoded words in unsafe charsets relabelled, so the header parser never runs their codec."""

    def relabel(match: re.Match[str]) -> str:
        if is_safe_charset(match.group(1)):
            return match.group(0)
        defects.append(f"charset_refused:{clean_header_text(match.group(1))[:40]}")
        return "=?x-refused-charset"

    return _ENCODED_WORD_CHARSET.sub(relabel, value) if "=?" in value else value


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


def has_field(message: Message, name: str) -> bool:
    wanted = name.lower()
    return any(key.lower() == wanted for key in message.keys())


def parsed_values(message: Message, name: str, defects: list[str]) -> Iterator[object]:
    """Each `name` field through the modern header parser; one that makes the parser fail is reported."""
    for value in raw_values(message, name):
        try:
            yield _MODERN.header_factory(name, _FOLD.sub("", _defused(value, defects)))
        except Exception as error:  # the header parser has had crash bugs on hostile input
            defects.append(f"header_unparseable:{name.lower()}:{type(error).__name__}")


def decoded_value(name: str, value: str, defects: list[str]) -> str:
    """`value` with its encoded words decoded, as the modern parser reads an unstructured field."""
    if "=?" not in value:
        return clean_header_text(value)
    try:
        unfolded = _FOLD.sub("", _defused(value, defects))
        return clean_header_text(str(_MODERN.header_factory(f"x-{name}", unfolded)))
    except Exception as error:
        defects.append(f"header_unparseable:{name.lower()}:{type(error).__name__}")
        return clean_header_text(value)


def decoded_text(message: Message, name: str, defects: list[str]) -> str:
    """The first `name` field decoded (encoded words, bad charsets replaced), on one line."""
    for value in parsed_values(message, name, defects):
        return clean_header_text(str(value))
    raw = raw_values(message, name)
    return clean_header_text(raw[0]) if raw else ""


def decoded_addresses(message: Message, name: str, defects: list[str]) -> list[tuple[str, str]]:
    """(email, display name) pairs of every `name` field in header order; emails are lower-cased."""
    found: list[tuple[str, str]] = []
    for value in parsed_values(message, name, defects):
        addresses = getattr(value, "addresses", None)
        if addresses is None:
            found.extend(_plain_addresses(str(value)))
            continue
        for address in addresses:
            try:
                username, domain = address.username, address.domain
                display_name = address.display_name
            except Exception:
                defects.append(f"address_unparseable:{name.lower()}")
                continue
            email_address = clean_header_text(f"{username}@{domain}").lower() if username and domain else ""
            if email_address:
                found.append((email_address, clean_header_text(display_name or "")))
    return found


def _plain_addresses(value: str) -> list[tuple[str, str]]:
    pairs = email.utils.getaddresses([value])
    return [(clean_header_text(a).lower(), clean_header_text(n)) for n, a in pairs if "@" in a]


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
    except Exception:  # any malformed date, whatever the stdlib raises for it
        defects.append("header_date_unparseable")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)
