"""Reading address fields within a per-message budget: the modern address parser only ever sees one short
address at a time, because its cost grows quadratically with a field's length on hostile input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import Message

from services.ingest.domain.mime_headers import clean_header_text, is_safe_charset, raw_values
from services.ingest.domain.mime_limits import MimeLimits

_FOLD = re.compile(r"\r\n|\r|\n")
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*\s]{1,64})")
# The shapes nearly every address has, read without the (slow) modern parser: `a@b`, `<a@b>`,
# `Name <a@b>` and `"Name" <a@b>`, in plain ASCII without encoded words. Anything else takes the full parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*"
_SIMPLE_ADDRESS = re.compile(
    rf'(?:(?P<bare>{_ADDR_SPEC})|(?:"(?P<quoted>[^"\\]*)"|(?P<phrase>{_ATOM}(?: +{_ATOM})*))? *<(?P<angle>{_ADDR_SPEC})>)'
)


@dataclass(frozen=True)
class ReadAddress:
    email: str
    display_name: str
    # False when the parser reported a defect in this address (a strict reader refuses those).
    clean: bool


def address_chunks(value: str) -> list[str]:
    """Split an address-list field at its top-level commas (and group markers), in one linear pass.

    Commas inside quoted strings, comments and angle brackets do not split; a group's name (before its
    colon) is dropped and its closing semicolon separates like a comma.
    """
    chunks: list[str] = []
    start = 0
    quoted = escaped = in_angle = False
    comment_depth = 0
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment_depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif comment_depth:
            comment_depth += 1 if char == "(" else -1 if char == ")" else 0
        elif char == '"':
            quoted = True
        elif char == "(":
            comment_depth = 1
        elif char in "<>":
            in_angle = char == "<"
        elif not in_angle and char == ":":
            start = index + 1
        elif not in_angle and char in ",;":
            chunks.append(value[start:index])
            start = index + 1
    chunks.append(value[start:])
    return [chunk.strip() for chunk in chunks if chunk.strip()]


class AddressReader:
    """Reads the address fields of one message: at most `max_participants` addresses and
    `max_address_bytes_total` bytes of them are parsed."""

    def __init__(self, limits: MimeLimits) -> None:
        self._remaining = limits.max_address_bytes_total
        self._remaining_count = limits.max_participants
        self._longest = limits.max_address_bytes

    def read(self, message: Message, name: str, defects: list[str]) -> list[ReadAddress]:
        """Every address of every `name` field in header order; emails are lower-cased."""
        found: list[ReadAddress] = []
        for value in raw_values(message, name):
            for chunk in address_chunks(_FOLD.sub("", value)):
                if "@" not in chunk:
                    continue  # no address in it (a group's leftovers, or noise), nothing worth parsing
                if len(chunk) > self._longest:
                    defects.append("limit:address_bytes")
                    continue
                if len(chunk) > self._remaining or not self._remaining_count:
                    defects.append("limit:address_bytes_total")
                    return found
                self._remaining -= len(chunk)
                self._remaining_count -= 1
                found.extend(parse_address(chunk, defects))
        return found


def parse_address(chunk: str, defects: list[str]) -> list[ReadAddress]:
    """The address(es) in one chunk of an address list: common shapes directly, the rest fully."""
    if "=?" not in chunk and chunk.isascii():
        simple = _SIMPLE_ADDRESS.fullmatch(chunk)
        if simple is not None:
            email_address = simple.group("bare") or simple.group("angle")
            display_name = simple.group("quoted") or simple.group("phrase") or ""
            return [ReadAddress(email_address.lower(), clean_header_text(display_name), True)]
    return parse_address_fully(chunk, defects)


def parse_address_fully(chunk: str, defects: list[str]) -> list[ReadAddress]:
    """The address(es) in one chunk through the modern header parser (keep chunks short: it is quadratic)."""
    try:
        header = policy.default.header_factory("to", _defused(chunk, defects))
        addresses = header.addresses  # type: ignore[attr-defined]
        clean = not header.defects
    except Exception as error:  # the header parser has had crash bugs on hostile input
        defects.append(f"address_unparseable:{type(error).__name__}")
        return []
    found = []
    for address in addresses:
        username, domain = address.username, address.domain
        if not (username and domain):
            continue
        email_address = clean_header_text(f"{username}@{domain}").lower()
        found.append(ReadAddress(email_address, clean_header_text(address.display_name or ""), clean))
    return found


def _defused(value: str, defects: list[str]) -> str:
    """Encoded words in unsafe charsets relabelled, so the parser never runs their slow codec."""

    def relabel(match: re.Match[str]) -> str:
        if is_safe_charset(match.group(1)):
            return match.group(0)
        defects.append(f"charset_refused:{clean_header_text(match.group(1))[:40]}")
        return "=?x-refused-charset"

    return _ENCODED_WORD_CHARSET.sub(relabel, value) if "=?" in value else value
