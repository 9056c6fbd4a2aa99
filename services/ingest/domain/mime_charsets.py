"""Which charset labels mail may use, and decoding bytes by a label without ever asking the codec registry about
an unknown name.

The standard library's codec lookup remembers every name it was asked about, found or not, for the life of the
process (`encodings._cache`), so a stream of hostile mail with a fresh charset name in every part grows memory
without bound. Here a label is looked up in a fixed allow-list (the labels of the WHATWG Encoding Standard plus
those mail clients write that the web does not use, such as `utf-7`, `ks_c_5601-1987` and `iso-8859-8-i`), and
only the Python codec names of that list ever reach the registry. A label outside the list decodes by the
fallback: UTF-8 when the bytes are valid UTF-8, otherwise windows-1252 (what browsers use for unlabelled
Western text), with U+FFFD for the few bytes windows-1252 leaves undefined. Codecs with super-linear decoders
(punycode, idna) and non-text codecs (base64, rot13, zlib) are simply not on the list.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass

FALLBACK_DESCRIPTION = "UTF-8 when valid, else windows-1252"
_ASCII = "ascii-or-fallback"
_MAX_LABEL_CHARS = 64
_REPORTED_LABEL_CHARS = 40
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

# Python codec -> the labels that name it (lower case). Every Python codec named here exists in CPython 3.11+.
_LABELS: dict[str, tuple[str, ...]] = {
    "utf-8": ("utf-8", "utf8", "unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "x-unicode20utf8"),
    "utf-16": ("utf-16", "utf16", "unicode", "csunicode", "iso-10646-ucs-2", "ucs-2", "unicodefeff"),
    "utf-16-le": ("utf-16le", "utf-16-le"),
    "utf-16-be": ("utf-16be", "utf-16-be", "unicodefffe"),
    "utf-32": ("utf-32", "utf32", "ucs-4", "iso-10646-ucs-4"),
    "utf-32-le": ("utf-32le", "utf-32-le"),
    "utf-32-be": ("utf-32be", "utf-32-be"),
    "utf-7": ("utf-7", "utf7", "unicode-1-1-utf-7", "csunicode11utf7"),
    # The web decodes these Latin-1 and ASCII labels as windows-1252, a superset of their printable range;
    # mail mislabelled this way (curly quotes from Windows) is common.
    "cp1252": (
        "windows-1252",
        "cp1252",
        "x-cp1252",
        "iso-8859-1",
        "iso8859-1",
        "iso88591",
        "iso_8859-1",
        "iso_8859-1:1987",
        "iso-ir-100",
        "latin1",
        "latin-1",
        "l1",
        "csisolatin1",
        "ibm819",
        "cp819",
    ),
    # ASCII has no 8-bit bytes, so any there mean the label is wrong: they decode by the fallback (UTF-8 text
    # mislabelled as ASCII is the common case), without reporting an unknown label.
    _ASCII: ("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us", "csascii"),
    "iso8859-2": (
        "iso-8859-2",
        "iso8859-2",
        "iso88592",
        "iso_8859-2",
        "iso_8859-2:1987",
        "iso-ir-101",
        "latin2",
        "l2",
        "csisolatin2",
    ),
    "iso8859-3": (
        "iso-8859-3",
        "iso8859-3",
        "iso88593",
        "iso_8859-3",
        "iso_8859-3:1988",
        "iso-ir-109",
        "latin3",
        "l3",
        "csisolatin3",
    ),
    "iso8859-4": (
        "iso-8859-4",
        "iso8859-4",
        "iso88594",
        "iso_8859-4",
        "iso_8859-4:1988",
        "iso-ir-110",
        "latin4",
        "l4",
        "csisolatin4",
    ),
    "iso8859-5": (
        "iso-8859-5",
        "iso8859-5",
        "iso88595",
        "iso_8859-5",
        "iso_8859-5:1988",
        "iso-ir-144",
        "cyrillic",
        "csisolatincyrillic",
    ),
    "iso8859-6": (
        "iso-8859-6",
        "iso8859-6",
        "iso88596",
        "iso_8859-6",
        "iso_8859-6:1987",
        "iso-ir-127",
        "iso-8859-6-e",
        "iso-8859-6-i",
        "csiso88596e",
        "csiso88596i",
        "arabic",
        "asmo-708",
        "ecma-114",
        "csisolatinarabic",
    ),
    "iso8859-7": (
        "iso-8859-7",
        "iso8859-7",
        "iso88597",
        "iso_8859-7",
        "iso_8859-7:1987",
        "iso-ir-126",
        "greek",
        "greek8",
        "ecma-118",
        "elot_928",
        "sun_eu_greek",
        "csisolatingreek",
    ),
    # Visual (-8, -8-e) and logical (-8-i) Hebrew have the same bytes; only the display order differs.
    "iso8859-8": (
        "iso-8859-8",
        "iso8859-8",
        "iso88598",
        "iso_8859-8",
        "iso_8859-8:1988",
        "iso-ir-138",
        "iso-8859-8-e",
        "iso-8859-8-i",
        "csiso88598e",
        "csiso88598i",
        "csisolatinhebrew",
        "hebrew",
        "visual",
        "logical",
    ),
    "cp1254": (
        "windows-1254",
        "cp1254",
        "x-cp1254",
        "iso-8859-9",
        "iso8859-9",
        "iso88599",
        "iso_8859-9",
        "iso_8859-9:1989",
        "iso-ir-148",
        "latin5",
        "l5",
        "csisolatin5",
    ),
    "iso8859-10": ("iso-8859-10", "iso8859-10", "iso885910", "iso-ir-157", "latin6", "l6", "csisolatin6"),
    "cp874": (
        "windows-874",
        "cp874",
        "dos-874",
        "iso-8859-11",
        "iso8859-11",
        "iso885911",
        "tis-620",
        "tis620",
    ),
    "iso8859-13": ("iso-8859-13", "iso8859-13", "iso885913", "latin7", "l7"),
    "iso8859-14": ("iso-8859-14", "iso8859-14", "iso885914", "latin8", "l8"),
    "iso8859-15": (
        "iso-8859-15",
        "iso8859-15",
        "iso885915",
        "iso_8859-15",
        "latin-9",
        "latin9",
        "l9",
        "csisolatin9",
    ),
    "iso8859-16": ("iso-8859-16", "iso8859-16", "iso885916", "latin10", "l10"),
    "cp1250": ("windows-1250", "cp1250", "x-cp1250"),
    "cp1251": ("windows-1251", "cp1251", "x-cp1251"),
    "cp1253": ("windows-1253", "cp1253", "x-cp1253"),
    "cp1255": ("windows-1255", "cp1255", "x-cp1255"),
    "cp1256": ("windows-1256", "cp1256", "x-cp1256"),
    "cp1257": ("windows-1257", "cp1257", "x-cp1257"),
    "cp1258": ("windows-1258", "cp1258", "x-cp1258"),
    "cp866": ("ibm866", "cp866", "866", "csibm866"),
    "cp850": ("ibm850", "cp850", "850", "csibm850"),
    "cp437": ("ibm437", "cp437", "437", "cspc8codepage437"),
    "koi8-r": ("koi8-r", "koi8_r", "koi8", "koi", "cskoi8r"),
    "koi8-u": ("koi8-u", "koi8-ru"),
    "mac-roman": ("macintosh", "mac", "x-mac-roman", "csmacintosh", "macroman"),
    "mac-cyrillic": ("x-mac-cyrillic", "x-mac-ukrainian", "maccyrillic"),
    "mac-greek": ("x-mac-greek",),
    "mac-turkish": ("x-mac-turkish",),
    "mac-latin2": ("x-mac-ce", "x-mac-centraleurroman"),
    "mac-iceland": ("x-mac-icelandic",),
    "gbk": (
        "gbk",
        "x-gbk",
        "gb2312",
        "gb_2312",
        "gb_2312-80",
        "csgb2312",
        "csiso58gb231280",
        "iso-ir-58",
        "chinese",
        "cp936",
        "ms936",
        "windows-936",
        "euc-cn",
    ),
    "gb18030": ("gb18030",),
    "hz": ("hz-gb-2312", "hz"),
    "big5hkscs": ("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5"),
    "cp950": ("cp950", "ms950", "windows-950"),
    "euc_jp": ("euc-jp", "x-euc-jp", "cseucpkdfmtjapanese"),
    "iso2022_jp_2": ("iso-2022-jp", "csiso2022jp", "iso-2022-jp-2", "iso-2022-jp-1"),
    "cp932": (
        "shift_jis",
        "shift-jis",
        "sjis",
        "x-sjis",
        "ms_kanji",
        "ms932",
        "windows-31j",
        "csshiftjis",
        "cp932",
    ),
    "cp949": (
        "euc-kr",
        "cseuckr",
        "ks_c_5601-1987",
        "ks_c_5601-1989",
        "ksc5601",
        "ksc_5601",
        "csksc56011987",
        "iso-ir-149",
        "korean",
        "windows-949",
        "cp949",
        "uhc",
    ),
    "iso2022_kr": ("iso-2022-kr", "csiso2022kr"),
    "kz1048": ("kz-1048", "kz1048", "strk1048-2002", "rk1048"),
    "ptcp154": ("ptcp154", "pt154", "cp154", "csptcp154"),
}

CHARSETS: dict[str, str] = {label: codec for codec, labels in _LABELS.items() for label in labels}

# Decoders by Python codec name, filled on first use from the fixed list above only.
_decoders: dict[str, Callable[[bytes, str], tuple[str, int]]] = {}


@dataclass(frozen=True)
class DecodedText:
    text: str
    # The label as written (see `reported_label`) when it is not on the list, else "".
    unknown_label: str = ""


def charset_label(label: str | None) -> str:
    """A label as written, trimmed to what names it: quotes, spaces and an RFC 2231 `*language` removed."""
    cleaned = (label or "").strip().strip("\"'").strip()
    return cleaned.partition("*")[0].strip()[:_MAX_LABEL_CHARS]


def reported_label(label: str) -> str:
    """An unknown label as a defect names it: printable ASCII only, at most 40 characters."""
    return _UNPRINTABLE.sub("?", charset_label(label))[:_REPORTED_LABEL_CHARS]


def codec_for(label: str | None) -> str | None:
    """The Python codec a charset label names, or None when the label is not on the allow-list."""
    wanted = charset_label(label).lower()
    return CHARSETS.get(wanted) or CHARSETS.get(wanted.replace("_", "-"))


def decode_bytes(data: bytes, label: str | None) -> DecodedText:
    """`data` as text in the charset `label` names (undecodable bytes become U+FFFD); an unknown label, or none,
    decodes by the fallback (`FALLBACK_DESCRIPTION`) and is reported in `unknown_label`."""
    codec = codec_for(label) if label else None
    if codec is None:
        return DecodedText(decode_fallback(data), reported_label(label) if label else "")
    if codec == _ASCII:
        return DecodedText(data.decode("ascii") if data.isascii() else decode_fallback(data))
    decoder = _decoders.get(codec)
    if decoder is None:
        decoder = _decoders[codec] = codecs.lookup(codec).decode
    try:
        return DecodedText(decoder(data, "replace")[0])
    except Exception:  # a CJK decoder meeting input it does not expect (none known; defensive)
        return DecodedText(decode_fallback(data))


def decode_fallback(data: bytes) -> str:
    """Bytes of no (or an unknown) charset: UTF-8 when they are valid UTF-8, otherwise windows-1252."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")
