"""Hostile mail never crashes the normalizer, and every bomb is cut off by a limit that records a defect."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable
from email import policy
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.domain.mime import DEFAULT_LIMITS, attachment_content, normalize_message
from services.ingest.domain.mime_bounds import bound_raw_message
from services.ingest.domain.mime_limits import MimeLimits
from tests.fixtures.mime_samples import assert_publishable

LIMITS = DEFAULT_LIMITS

# Fragments that have broken real parsers: encoded newlines, bad charsets, CRLF tricks, stray boundaries.
TOKENS = [
    b"=?utf-8?q?=0A?=",
    b"=?UTF-8?Q?=0D=0A?=Bcc: injected@evil.example",
    b"=?x-no-such?b?w6k=?=",
    b"=?utf-8?b?!!!?=",
    b"=?rot13?q?abc?=",
    b"=?",
    b"?=",
    b"\r\n",
    b"\r",
    b"\n",
    b"\r\n ",
    b"\r\n\r\n",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b'"',
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b":",
    b"(",
    b")",
    b"\\",
    b"a@b.example",
    b"Bcc: x@evil.example",
    b"boundary=",
    b"--",
    b"multipart/mixed",
    b"message/rfc822",
    b"charset=x-no-such",
    b"base64",
]
FIELD_NAMES = [
    b"Subject",
    b"From",
    b"To",
    b"Cc",
    b"Reply-To",
    b"Message-ID",
    b"References",
    b"In-Reply-To",
    b"Date",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Content-Disposition",
    b"Content-ID",
    b"Auto-Submitted",
    b"X-Junk",
]

fragment = st.sampled_from(TOKENS) | st.binary(max_size=12)
# A fragment repeated many times: how huge headers and thousands of encoded words are made.
repeated_fragment = st.tuples(st.sampled_from(TOKENS), st.integers(1, 8_000)).map(
    lambda pair: pair[0] * pair[1]
)
field_value = st.lists(fragment | repeated_fragment, max_size=12).map(b"".join)
header_field = st.tuples(st.sampled_from(FIELD_NAMES), field_value).map(
    lambda f: f[0] + b": " + f[1] + b"\r\n"
)
header_block = st.lists(header_field, max_size=8).map(b"".join)
body = st.sampled_from([b"QUJD=A", b"====", b"--b\r\n", b"begin 644 x\r\n", b""]) | st.binary(max_size=64)


def _leaf(headers: bytes, content_type: bytes, encoding: bytes, payload: bytes) -> bytes:
    return (
        headers
        + b"Content-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: "
        + encoding
        + b"\r\n\r\n"
        + payload
    )


def _multipart(boundary: bytes, children: list[bytes], closed: bool, headers: bytes) -> bytes:
    parts = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    closing = b"--" + boundary + b"--\r\n" if closed else b""
    return (
        headers
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\npreamble\r\n'
        + parts
        + closing
    )


leaf = st.builds(
    _leaf,
    header_block,
    st.sampled_from(
        [b"text/plain; charset=x-no-such", b"text/html", b"application/pdf", b"image/png", b"text/plain"]
    ),
    st.sampled_from([b"base64", b"quoted-printable", b"x-uuencode", b"8bit", b"bogus"]),
    body,
)
mime_tree = st.recursive(
    leaf,
    lambda children: (
        st.builds(
            _multipart,
            st.sampled_from([b"b", b"bb", b"b b", b"=?"]),
            st.lists(children, max_size=4),
            st.booleans(),
            header_block,
        )
        | st.builds(
            lambda inner, headers: headers + b"Content-Type: message/rfc822\r\n\r\n" + inner,
            children,
            header_block,
        )
    ),
    max_leaves=12,
)
hostile_message = st.tuples(header_block, mime_tree, st.sampled_from([b"", b"\n", b"\r", b"\r\n"])).map(
    lambda m: (m[0] + m[1]).replace(b"\r\n", m[2]) if m[2] else m[0] + m[1]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(hostile_message)
def test_hostile_messages_never_crash_the_normalizer(raw: bytes) -> None:
    mail = normalize_message(raw)

    assert_publishable(mail)
    assert mail.size_bytes == len(raw)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(hostile_message)
def test_every_attachment_described_of_a_hostile_message_can_be_served(raw: bytes) -> None:
    """An attachment is advertised only if its content can be cut out again (FetchAttachment relies on it)."""
    for attachment in normalize_message(raw).attachments:
        content = attachment_content(raw, attachment.part_path)
        assert content is not None, attachment
        assert hashlib.sha256(content).hexdigest() == attachment.sha256
        assert len(content) == attachment.size_bytes


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_normalizer(raw: bytes) -> None:
    assert_publishable(normalize_message(raw))


def deep_multipart(depth: int) -> bytes:
    lines = [b'Subject: deep\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n']
    lines.extend(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i)
        for i in range(1, depth)
    )
    lines.append(b"--b%d\r\n\r\nbottom\r\n" % (depth - 1))
    return b"".join(lines)


def deep_embedded_messages(depth: int) -> bytes:
    return (
        b"Subject: deep\r\n"
        + b"Content-Type: message/rfc822\r\n\r\n" * depth
        + b"Subject: bottom\r\n\r\nbody"
    )


def encoded_word_subject(count: int) -> bytes:
    return b"Subject: " + b" ".join([b"=?utf-8?q?a?="] * count) + b"\r\n\r\nbody"


def many_parts(count: int) -> bytes:
    return b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"


def many_fields(count: int) -> bytes:
    return b"".join(b"X-H%d: v\r\n" % i for i in range(count)) + b"\r\nbody"


def huge_field(size: int) -> bytes:
    return b"X-Junk: " + b"x" * size + b"\r\nSubject: kept\r\n\r\nbody"


def many_addresses(count: int) -> bytes:
    return b"To: " + b", ".join(b"a%d@b.c" % i for i in range(count)) + b"\r\n\r\nbody"


def deep_digests(depth: int) -> bytes:
    """Digests whose parts have no Content-Type: each part is an embedded message (RFC 2046 5.1.5)."""
    lines = [b"Subject: digest\r\n"]
    lines.extend(
        b'Content-Type: multipart/digest; boundary="d%d"\r\n\r\n--d%d\r\n\r\n' % (i, i) for i in range(depth)
    )
    return b"".join(lines) + b"Subject: bottom\r\n\r\nbody"


def deep_partial_messages(depth: int) -> bytes:
    return b"Subject: deep\r\n" + b"Content-Type: message/partial\r\n\r\n" * depth + b"Subject: x\r\n\r\nbody"


def parts_behind_a_second_content_type(count: int) -> bytes:
    # The parser reads only the first Content-Type; a scanner that believed the second would see no parts.
    head = b"Content-Type: multipart/mixed; boundary=b\r\nContent-Type: message/rfc822\r\n\r\n"
    return head + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"


def parts_behind_a_quoted_decoy_boundary(count: int) -> bytes:
    head = b'Content-Type: multipart/mixed; name="x; boundary=decoy"; boundary=real\r\n\r\n'
    return head + b"--real\r\n\r\nx\r\n" * count + b"--real--\r\n"


def slow_charset_body(size: int) -> bytes:
    # The punycode decoder is quadratic: a megabyte labelled with it would take minutes to decode.
    head = (
        b"Subject: =?PunyCode?q?" + b"a" * 200 + b"?=\r\nContent-Type: text/plain; charset=punycode\r\n\r\n"
    )
    return head + b"a" * size + b"-" + b"9" * size


def hostile_address_fields(size: int) -> bytes:
    # One overlong address per field, its display name a run of quoted pairs.
    fields = (b"From", b"Sender", b"Reply-To", b"To", b"Cc", b"Bcc", b"Delivered-To")
    return b"".join(name + b': "' + b'\\"' * (size // 2) + b'" <a@x.io>\r\n' for name in fields) + b"\r\nbody"


def many_short_addresses(count: int) -> bytes:
    fields = (b"To", b"Cc", b"Bcc")
    value = b", ".join(b"u%d@x.io" % i for i in range(count))
    return b"".join(name + b": " + value + b"\r\n" for name in fields) + b"\r\nbody"


def empty_lines(count: int) -> bytes:
    return b"Subject: lines\r\n\r\n" + b"\r\n" * count


BOMBS: list[tuple[str, Callable[[int], bytes], st.SearchStrategy[int], str]] = [
    ("deep multipart", deep_multipart, st.integers(LIMITS.max_depth + 1, 3000), "limit:depth"),
    ("deep message/rfc822", deep_embedded_messages, st.integers(LIMITS.max_depth + 1, 3000), "limit:depth"),
    (
        "encoded words",
        encoded_word_subject,
        st.integers(LIMITS.max_encoded_words_per_header + 1, 30_000),
        "limit:encoded_words",
    ),
    ("deep digest parts", deep_digests, st.integers(LIMITS.max_depth + 1, 2000), "limit:depth"),
    ("deep message/partial", deep_partial_messages, st.integers(LIMITS.max_depth + 1, 3000), "limit:depth"),
    ("parts", many_parts, st.integers(LIMITS.max_parts + 1, 20_000), "limit:parts"),
    (
        "parts behind a second Content-Type",
        parts_behind_a_second_content_type,
        st.integers(LIMITS.max_parts + 1, 20_000),
        "limit:parts",
    ),
    (
        "parts behind a quoted decoy boundary",
        parts_behind_a_quoted_decoy_boundary,
        st.integers(LIMITS.max_parts + 1, 20_000),
        "limit:parts",
    ),
    ("header count", many_fields, st.integers(LIMITS.max_header_count + 1, 20_000), "limit:header_count"),
    (
        "hostile address fields",
        hostile_address_fields,
        st.integers(LIMITS.max_address_bytes + 16, 8000),
        "limit:address_bytes",
    ),
    (
        "too many addresses",
        many_short_addresses,
        st.integers(LIMITS.max_participants // 3 + 1, 1000),
        "limit:address_bytes_total",
    ),
    ("empty lines", empty_lines, st.integers(LIMITS.max_lines, 1_500_000), "limit:lines"),
    ("slow charset", slow_charset_body, st.integers(1000, 500_000), "charset_unknown:punycode"),
    ("huge header", huge_field, st.integers(LIMITS.max_header_bytes + 1, 2_000_000), "limit:header_bytes"),
    (
        "addresses",
        many_addresses,
        st.integers(LIMITS.max_addresses_per_header + 2, 2_000),
        "limit:addresses",
    ),
]


@pytest.mark.parametrize(("build", "sizes", "defect"), [b[1:] for b in BOMBS], ids=[b[0] for b in BOMBS])
def test_every_bomb_is_cut_off_by_its_limit_with_a_defect(
    build: Callable[[int], bytes], sizes: st.SearchStrategy[int], defect: str
) -> None:
    @settings(max_examples=6, deadline=None)
    @given(sizes)
    def cut_off(size: int) -> None:
        mail = normalize_message(build(size))
        assert defect in mail.defects
        assert_publishable(mail)

    cut_off()


@pytest.mark.parametrize(
    ("build", "size"), [(deep_multipart, 1000), (deep_embedded_messages, 1000), (deep_digests, 500)]
)
def test_negative_control_deep_bombs_crash_the_bare_stdlib_parser(
    build: Callable[[int], bytes], size: int
) -> None:
    with pytest.raises(RecursionError):
        BytesParser(policy=policy.default).parsebytes(build(size))


def test_negative_control_the_bare_parser_reads_every_part_of_a_part_bomb() -> None:
    parsed = BytesParser(policy=policy.default).parsebytes(many_parts(1000))

    assert len(parsed.get_payload()) == 1000 > LIMITS.max_parts


def test_negative_control_the_bare_parser_decodes_every_encoded_word() -> None:
    parsed = BytesParser(policy=policy.default).parsebytes(encoded_word_subject(2000))

    assert parsed["subject"].count("a") == 2000 > LIMITS.max_encoded_words_per_header


def test_within_limits_the_same_shapes_record_no_limit_defect() -> None:
    for raw in (
        deep_multipart(10),
        many_parts(50),
        encoded_word_subject(50),
        many_fields(50),
        many_addresses(50),
    ):
        assert not [d for d in normalize_message(raw).defects if d.startswith("limit:")]


def test_a_message_over_the_size_limit_keeps_its_headers_and_records_the_cut() -> None:
    raw = b"Subject: big\r\nMessage-ID: <big@example.com>\r\n\r\n" + b"x" * 5000

    mail = normalize_message(raw, limits=MimeLimits(max_message_bytes=1000))

    assert "limit:message_bytes" in mail.defects
    assert (mail.subject, mail.rfc_message_id, mail.size_bytes) == ("big", "<big@example.com>", len(raw))
    assert len(mail.text_body) < 1000


def test_truncated_encoded_word_subject_keeps_its_first_words() -> None:
    mail = normalize_message(encoded_word_subject(10_000))

    assert mail.subject == "a" * LIMITS.max_encoded_words_per_header


def _container(subtype: bytes, boundary: bytes, children: list[bytes], closed: bool, decoy: int) -> bytes:
    # Decoys that a naive scanner would read differently from the parser: a boundary inside a quoted
    # parameter, and a second Content-Type (the parser only reads the first).
    quoted = b'; name="x; boundary=decoy"' if decoy & 1 else b""
    second = b"Content-Type: message/rfc822\r\n" if decoy & 2 else b""
    parts = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    return (
        b"Content-Type: multipart/"
        + subtype
        + quoted
        + b'; boundary="'
        + boundary
        + b'"\r\n'
        + second
        + b"\r\n"
        + parts
        + (b"--" + boundary + b"--\r\n" if closed else b"")
    )


structure = st.recursive(
    st.sampled_from([b"Content-Type: text/plain\r\n\r\nleaf", b"\r\nno headers", b"Subject: s\r\n\r\nbody"]),
    lambda children: (
        st.builds(
            _container,
            st.sampled_from([b"mixed", b"digest", b"alternative"]),
            st.sampled_from([b"b1", b"b2", b"b1x", b"decoy"]),
            st.lists(children, max_size=5),
            st.booleans(),
            st.integers(0, 3),
        )
        | st.builds(
            lambda subtype, inner: b"Content-Type: message/" + subtype + b"\r\n\r\n" + inner,
            st.sampled_from([b"rfc822", b"partial", b"news"]),
            children,
        )
    ),
    max_leaves=40,
)
SMALL = MimeLimits(max_parts=6, max_depth=3)


def _parsed_shape(raw: bytes) -> tuple[int, int]:
    """(parts below multiparts, deepest level) of what the compat32 parser builds, walked without recursion."""
    root = BytesParser(policy=policy.compat32).parsebytes(raw)
    parts, deepest = 0, 0
    pending = [(root, 0)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        payload = node.get_payload()
        if isinstance(payload, list):
            parts += len(payload) if node.get_content_maintype() == "multipart" else 0
            pending.extend((child, depth + 1) for child in payload)
    return parts, deepest


@settings(max_examples=150, deadline=None)
@given(structure)
def test_the_bounded_source_never_parses_beyond_the_part_and_depth_limits(raw: bytes) -> None:
    bounded = bound_raw_message(raw, SMALL)

    parts, deepest = _parsed_shape(bounded.data)

    assert parts <= SMALL.max_parts
    assert deepest <= SMALL.max_depth
    if bounded.data == raw:
        assert not [d for d in bounded.defects if d in ("limit:parts", "limit:depth")]


subject_only = st.lists(
    st.sampled_from([t for t in TOKENS if b"\r" not in t and b"\n" not in t])
    | st.sampled_from(
        [b"=?UTF-8?Q?=0A?=", b"=?utf-8?b?DQo=?=", b"=?UTF-8?Q?=0D=0ABcc:_injected@evil.example?="]
    ),
    max_size=20,
).map(b"".join)


@settings(max_examples=100, deadline=None)
@given(subject_only)
def test_an_encoded_subject_can_never_add_a_participant_or_a_line_break(subject: bytes) -> None:
    raw = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: " + subject + b"\r\n\r\nbody"

    mail = normalize_message(raw)

    assert [p.email for p in mail.participants] == ["alice@example.com", "bob@example.org"]
    assert "\n" not in mail.subject and "\r" not in mail.subject


def test_negative_control_a_raw_line_break_in_the_subject_does_start_a_new_field() -> None:
    raw = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\nBcc: injected@evil.example\r\n\r\nbody"

    assert "injected@evil.example" in [p.email for p in normalize_message(raw).participants]


def test_negative_control_python_resolves_punycode_as_a_text_codec() -> None:
    # Only the normalizer's own refusal keeps hostile bodies away from this decoder.
    assert codecs.lookup("PunyCode").name == "punycode"
    assert b"bcher-kva".decode("punycode") == "bücher"
