"""Charsets as mail writes them: every label on the allow-list (aliases included) decodes by its codec, raw 8-bit
bytes in encoded words by the word's charset, unknown labels by the documented fallback, and the standard
library's codec registry is never asked about a name that is not on the list (it would remember it forever)."""

from __future__ import annotations

import base64
import codecs
import encodings
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain.mime import normalize_message
from services.ingest.domain.mime_charsets import CHARSETS, codec_for, decode_bytes
from tests.fixtures.mime_samples import assert_publishable


def b_word(label: str, text: str, codec: str) -> bytes:
    return f"=?{label}?B?{base64.b64encode(text.encode(codec)).decode()}?=".encode()


def q_word(label: str, text: str, codec: str) -> bytes:
    encoded = "".join(
        f"={byte:02X}" if byte > 127 or chr(byte) in "=?_ \t" else chr(byte) for byte in text.encode(codec)
    )
    return f"=?{label}?Q?{encoded}?=".encode()


# (what the Subject holds, the subject a person must read, the defects expected). The report's table.
SUBJECTS = [
    (b"=?iso-8859-1?Q?Fr\xf6sche?=", "Frösche", []),
    (q_word("iso-8859-8-i", "שלום עולם", "iso8859_8"), "שלום עולם", []),
    (q_word("x-mac-cyrillic", "Привет", "mac_cyrillic"), "Привет", []),
    (b_word("ks_c_5601-1987", "안녕하세요", "cp949"), "안녕하세요", []),
    (b_word("gb2312", "你好", "gbk"), "你好", []),
    (b_word("iso-2022-jp", "こんにちは", "iso2022_jp"), "こんにちは", []),
    (b_word("shift_jis", "こんにちは", "cp932"), "こんにちは", []),
    (b_word("big5", "繁體中文", "big5"), "繁體中文", []),
    (q_word("koi8-r", "Здравствуйте", "koi8_r"), "Здравствуйте", []),
    (q_word("windows-1251", "Здравствуйте", "cp1251"), "Здравствуйте", []),
    (q_word("tis-620", "สวัสดี", "tis_620"), "สวัสดี", []),
    (q_word("windows-1252", "“quoted” €5", "cp1252"), "“quoted” €5", []),
    (b"=?iso-8859-1?Q?=93curly=94?=", "“curly”", []),
    (b"=?utf-8?q?=E2=82?= =?utf-8?q?=AC_split?=", "€ split", []),
    (b"=?us-ascii?Q?caf=C3=A9?=", "café", []),
    (b"=?utf-8*en?Q?Hello_world?=", "Hello world", []),
    (b"=?utf-8?q?caf=C3?=", "caf\ufffd", []),
    (b"=?x-unknown-charset?Q?caf=E9?=", "café", ["charset_unknown:x-unknown-charset"]),
    (b"=?punycode?q?bcher-kva?=", "bcher-kva", ["charset_unknown:punycode"]),
    (b"=?utf-7?Q?Hi_+AOk-?=", "Hi é", []),
    ("Grüße".encode(), "Grüße", []),
    ("Grüße".encode("latin-1"), "Grüße", []),
]


@pytest.mark.parametrize(("subject", "decoded", "defects"), SUBJECTS, ids=[s[1] for s in SUBJECTS])
def test_subjects_decode_by_their_declared_charset(subject: bytes, decoded: str, defects: list[str]) -> None:
    mail = normalize_message(b"From: a@b.test\r\nSubject: " + subject + b"\r\n\r\nbody")

    assert mail.subject == decoded
    assert [d for d in mail.defects if d.startswith("charset")] == defects


def test_raw_8bit_bytes_in_a_word_never_become_surrogate_escapes() -> None:
    raw = b"From: =?iso-8859-1?Q?J\xfcrgen?= <j@x.test>\r\nSubject: =?iso-8859-1?Q?Fr\xf6sche?=\r\n\r\nbody"

    mail = normalize_message(raw)

    assert mail.subject == "Frösche"
    assert mail.participants[0].display_name == "Jürgen"
    assert "\\udc" not in mail.subject and not any("\udc80" <= c <= "\udcff" for c in mail.subject)


def test_every_label_on_the_list_names_a_codec_of_this_python() -> None:
    for label, codec in CHARSETS.items():
        if codec != "ascii-or-fallback":
            assert codecs.lookup(codec), label
    assert codec_for("ISO-8859-8-I") == codec_for("iso-8859-8") == "iso8859-8"
    assert codec_for(" 'X-MAC-CYRILLIC' ") == "mac-cyrillic"
    assert codec_for("utf_8") == "utf-8"
    assert codec_for("punycode") is None and codec_for("rot13") is None and codec_for("base64") is None


def test_body_charsets_and_rfc2231_filenames_use_the_same_list() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=iso-8859-8-i\r\n\r\n"
        + "שלום".encode("iso8859_8")
        + b"\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=x-mac-cyrillic''%8F%F0%E8%E2%E5%F2.txt\r\n\r\nx\r\n--b--\r\n"
    )

    mail = normalize_message(raw)

    assert mail.text_body.strip() == "שלום"
    assert [a.filename for a in mail.attachments] == ["Привет.txt"]


def _hostile_with_fresh_charsets(names: list[str]) -> bytes:
    first, second, third, fourth, fifth = names
    return (
        f"From: =?{first}?q?x?= <a@b.test>\r\n"
        f"Subject: =?{second}?b?w6k=?=\r\n"
        f"Content-Type: multipart/mixed; boundary*0*={third}''b%41; boundary*1=\"x\"\r\n\r\n"
        "--bAx\r\n"
        f"Content-Type: text/plain; charset={fourth}\r\n\r\ncaf\xe9\r\n"
        "--bAx\r\n"
        f"Content-Disposition: attachment; filename*={fifth}''n%E9.txt\r\n\r\ndata\r\n"
        "--bAx--\r\n"
    ).encode("latin-1")


def test_unknown_charset_names_never_reach_the_codec_registry_cache() -> None:
    before = len(encodings._cache)  # type: ignore[attr-defined]

    for _ in range(50):
        names = [f"x-hostile-{uuid.uuid4().hex}" for _ in range(5)]
        mail = normalize_message(_hostile_with_fresh_charsets(names))
        assert_publishable(mail)
        assert f"charset_unknown:{names[3][:40]}" in mail.defects

    assert len(encodings._cache) == before  # type: ignore[attr-defined]


def test_negative_control_the_stdlib_remembers_every_unknown_name_it_is_asked_about() -> None:
    before = len(encodings._cache)  # type: ignore[attr-defined]

    with pytest.raises(LookupError):
        b"x".decode(f"x-hostile-{uuid.uuid4().hex}")

    assert len(encodings._cache) == before + 1  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), label=st.sampled_from([*sorted(CHARSETS)[:40], "x-none", "", "utf-8*de"]))
def test_decoding_never_raises_and_never_leaves_surrogates(data: bytes, label: str) -> None:
    text = decode_bytes(data, label).text

    assert not any("\ud800" <= c <= "\udfff" for c in text)


@settings(max_examples=200, deadline=None)
@given(
    subject=st.binary(max_size=80),
    name=st.binary(max_size=40),
    filename=st.binary(max_size=40),
    body=st.binary(max_size=80),
)
def test_no_surrogate_escape_reaches_anything_a_person_reads(
    subject: bytes, name: bytes, filename: bytes, body: bytes
) -> None:
    def one_line(value: bytes) -> bytes:
        return value.replace(b"\r", b"").replace(b"\n", b"")

    raw = (
        b"From: "
        + one_line(name)
        + b" <a@b.test>\r\nSubject: =?iso-8859-1?q?"
        + one_line(subject)
        + b"?=\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        + body
        + b'\r\n--b\r\nContent-Disposition: attachment; filename="'
        + one_line(filename).replace(b'"', b"")
        + b'"\r\n\r\nx\r\n--b--\r\n'
    )

    mail = normalize_message(raw)

    texts = [mail.subject, mail.text_body, mail.snippet, *(p.display_name for p in mail.participants)]
    texts += [a.filename for a in mail.attachments]
    for text in texts:
        assert not any("\ud800" <= c <= "\udfff" for c in text), text
        assert "\\udc" not in text or "\\udc" in raw.decode("latin-1")
