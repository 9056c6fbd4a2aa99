"""RFC 2047 encoded words, decoded from the header's own bytes by the charset each word declares.

The standard library's `decode_header` works on the parsed header's str, where a raw 8-bit byte inside an encoded
word is already a surrogate escape, and hands it back as the literal text `\\udcf6`. Here the words are read from
bytes: `Fr<0xF6>sche` in an ISO-8859-1 word is `Frösche`. Words in one charset that follow each other (only
whitespace between them, which RFC 2047 says to drop) are joined before decoding, so a multi-byte character split
across two words survives. Text outside encoded words is decoded by the charset fallback (UTF-8, else
windows-1252). Every step is linear in the field's length; charsets come from the allow-list in mime_charsets.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from services.ingest.domain.mime_charsets import charset_label, decode_bytes, decode_fallback

# charset (with an optional RFC 2231 *language), B or Q, and the encoded text. The text may not hold "?" (it ends
# the word); spaces are tolerated here, because broken mailers write them and this is display text only.
ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,75})\?([bBqQ])\?([^?]*)\?=")
# The strict form (no whitespace inside), which is what an address lexer takes as one opaque atom.
ENCODED_WORD_ATOM = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*\?=")
_WHITESPACE_ONLY = re.compile(rb"[ \t\r\n]*")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class _Piece:
    data: bytes
    # The charset label of an encoded word; None for text outside encoded words.
    charset: str | None


def header_bytes(value: str | bytes) -> bytes:
    """A parsed header value back as the bytes it was received as (the parser keeps 8-bit bytes as surrogates)."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # real non-ASCII text (not from the byte parser): keep it as UTF-8
        return value.encode("utf-8", "surrogateescape")


def decode_encoded_words(value: str | bytes, defects: list[str], *, field: str = "") -> str:
    """The header text with every encoded word decoded (not yet cleaned of control characters)."""
    data = header_bytes(value)
    if b"=?" not in data:
        return decode_fallback(data)
    pieces: list[_Piece] = []
    position = 0
    for match in ENCODED_WORD.finditer(data):
        between = data[position : match.start()]
        previous_is_word = bool(pieces) and pieces[-1].charset is not None and position > 0
        if between and not (previous_is_word and _WHITESPACE_ONLY.fullmatch(between)):
            pieces.append(_Piece(between, None))
        decoded = _word_bytes(match.group(2), match.group(3))
        if decoded is None:
            defects.append(f"header_undecodable:{field}" if field else "header_undecodable")
            pieces.append(_Piece(match.group(0), None))
        else:
            pieces.append(_Piece(decoded, match.group(1).decode("ascii", "replace")))
        position = match.end()
    if position < len(data):
        pieces.append(_Piece(data[position:], None))
    return "".join(_decoded_runs(pieces, defects))


def decode_word_text(charset: str, encoding: str, text: str, defects: list[str]) -> str | None:
    """One encoded word's text, given its three parts; None when its B or Q text cannot be decoded."""
    decoded = _word_bytes(encoding.encode("ascii", "replace"), header_bytes(text))
    if decoded is None:
        return None
    result = decode_bytes(decoded, charset)
    if result.unknown_label:
        defects.append(f"charset_unknown:{result.unknown_label}")
    return result.text


def _word_bytes(encoding: bytes, text: bytes) -> bytes | None:
    if encoding in (b"q", b"Q"):
        # Raw 8-bit bytes (invalid, but common) stay bytes and are decoded by the word's charset below.
        return _Q_ESCAPE.sub(lambda escape: bytes([int(escape.group(1), 16)]), text.replace(b"_", b" "))
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _decoded_runs(pieces: list[_Piece], defects: list[str]) -> list[str]:
    """Adjacent words of one charset are decoded together; plain text by the fallback."""
    texts: list[str] = []
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        if piece.charset is None:
            texts.append(decode_fallback(piece.data))
            index += 1
            continue
        label = charset_label(piece.charset).lower()
        run = [piece.data]
        index += 1
        while index < len(pieces) and pieces[index].charset is not None:
            if charset_label(pieces[index].charset).lower() != label:
                break
            run.append(pieces[index].data)
            index += 1
        result = decode_bytes(b"".join(run), piece.charset)
        if result.unknown_label:
            defects.append(f"charset_unknown:{result.unknown_label}")
        texts.append(result.text)
    return texts
