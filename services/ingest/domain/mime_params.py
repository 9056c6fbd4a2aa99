"""Content-Type and Content-Disposition read per RFC 2045, RFC 2231 and RFC 5322 unfolding, without the standard
library's parameter code (which asks the codec registry about any RFC 2231 charset name it meets, and keeps the
line breaks of a folded quoted value: a folded `boundary="..."` then matches no delimiter line).

`parse_mime_field` returns the value (`multipart/mixed`, `attachment`) and the parameters, RFC 2231 continuations
joined and decoded by their charset (allow-list in mime_charsets), folding removed (CRLF dropped, the whitespace
after it kept, as RFC 5322 unfolding says). `canonical_field` writes such a field back in a plain form the
standard parser reads identically: one line, every parameter a quoted string, no RFC 2231 syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from services.ingest.domain.mime_charsets import decode_bytes, decode_fallback
from services.ingest.domain.mime_words import header_bytes

_MAX_PARAMETERS = 64
_MAX_SECTIONS = 64
_FOLD = re.compile(rb"\r\n|\r|\n")
# name, then an optional RFC 2231 section number and extended-value star, then "=".
_PARAMETER_NAME = re.compile(rb"\s*([^\s=;\"*]+)\s*(?:\*\s*(\d{1,3}))?\s*(\*)?\s*=\s*")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)("?)', re.DOTALL)
_UNQUOTED = re.compile(rb"[^;]*")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_EXTENDED_VALUE = re.compile(rb"([^']*)'[^']*'(.*)", re.DOTALL)
_RFC2231_SYNTAX = re.compile(rb"\*\s*(?:\d+\s*\*?\s*)?=")


@dataclass
class MimeField:
    """A Content-Type or Content-Disposition: its value in lower case and its parameters (names lower case)."""

    value: str
    parameters: dict[str, str] = field(default_factory=dict)
    # Whether reading it needed RFC 2231 decoding or a value unfolded (then `canonical_field` is what a parser
    # should see: the standard one keeps line breaks inside quoted values and asks the codec registry about
    # RFC 2231 charsets).
    rewritten: bool = False
    # Parameters whose value was folded.
    folded: set[str] = field(default_factory=set)
    defects: list[str] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        return self.parameters.get(name, default)


@dataclass
class _Sections:
    plain: bytes | None = None
    # section number -> (bytes, percent-encoded?)
    parts: dict[int, tuple[bytes, bool]] = field(default_factory=dict)


def parse_mime_field(raw: str | bytes) -> MimeField:
    """Read a MIME field value (without its name); never raises."""
    data = header_bytes(raw)
    head, _, rest = data.partition(b";")
    result = MimeField(value=decode_fallback(_FOLD.sub(b"", head)).strip().lower())
    sections: dict[str, _Sections] = {}
    position = 0
    while position < len(rest) and len(sections) <= _MAX_PARAMETERS:
        name_match = _PARAMETER_NAME.match(rest, position)
        if name_match is None:
            # Not a parameter (junk between semicolons): skip to the next one.
            next_semicolon = rest.find(b";", position)
            position = len(rest) if next_semicolon < 0 else next_semicolon + 1
            continue
        position = name_match.end()
        folded_value, position = _value_at(rest, position)
        # RFC 5322 unfolding inside a value: the line break goes, the whitespace after it stays.
        raw_value = _FOLD.sub(b"", folded_value)
        if raw_value != folded_value:
            result.rewritten = True
            result.folded.add(decode_fallback(name_match.group(1)).lower())
        next_semicolon = rest.find(b";", position)
        position = len(rest) if next_semicolon < 0 else next_semicolon + 1
        name = decode_fallback(name_match.group(1)).lower()
        entry = sections.setdefault(name, _Sections())
        section, extended = name_match.group(2), name_match.group(3) is not None
        if section is None and not extended:
            if entry.plain is None:
                entry.plain = raw_value
        elif len(entry.parts) < _MAX_SECTIONS:
            result.rewritten = True
            entry.parts.setdefault(int(section or 0), (raw_value, extended))
    for name, entry in sections.items():
        value = _joined(entry, result.defects)
        if value is not None:
            result.parameters[name] = value
    return result


def may_need_canonical_form(raw: bytes) -> bool:
    """A cheap first test: only a folded field or one in RFC 2231 syntax can need `canonical_field`."""
    inner = raw.rstrip(b"\r\n")
    return b"\n" in inner or b"\r" in inner or bool(_RFC2231_SYNTAX.search(raw))


def canonical_field(name: bytes, parsed: MimeField, line_ending: bytes = b"\r\n") -> bytes:
    """`Name: value; p="v"; ...` on one line (8-bit values as UTF-8), which the compat32 parser reads as parsed."""
    pieces = [name + b": " + parsed.value.encode("utf-8")]
    for parameter, value in parsed.parameters.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
        pieces.append(parameter.encode("utf-8") + b'="' + escaped.encode("utf-8", "surrogateescape") + b'"')
    return b"; ".join(pieces) + line_ending


def _value_at(data: bytes, position: int) -> tuple[bytes, int]:
    if data[position : position + 1] == b'"':
        quoted = _QUOTED.match(data, position)
        assert quoted is not None  # the pattern matches any text that starts with a quote
        return _QUOTED_PAIR.sub(rb"\1", quoted.group(1)), quoted.end()
    unquoted = _UNQUOTED.match(data, position)
    assert unquoted is not None
    return unquoted.group(0).strip(), unquoted.end()


def _joined(entry: _Sections, defects: list[str]) -> str | None:
    """RFC 2231: numbered sections in order, the first extended one carrying charset'language'; else the plain
    value. Extended sections are percent-decoded and, with the plain ones, decoded by the declared charset."""
    if not entry.parts:
        return None if entry.plain is None else decode_fallback(entry.plain)
    charset: str | None = None
    chunks: list[bytes] = []
    for index, number in enumerate(sorted(entry.parts)):
        if number != index:
            defects.append("mime:rfc2231_section_gap")
            break
        text, extended = entry.parts[number]
        if extended:
            if index == 0:
                declared = _EXTENDED_VALUE.fullmatch(text)
                if declared is not None:
                    charset = declared.group(1).decode("ascii", "replace") or None
                    text = declared.group(2)
            text = unquote_to_bytes(text)
        chunks.append(text)
    decoded = decode_bytes(b"".join(chunks), charset)
    if decoded.unknown_label:
        defects.append(f"charset_unknown:{decoded.unknown_label}")
    return decoded.text
