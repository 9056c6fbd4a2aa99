"""Broken multiparts and header floods: folded and RFC 2231 parameters keep the MIME structure, a multipart without
boundaries is text (never an attachment without content), and the caps on a header block apply while it is read."""

from __future__ import annotations

import datetime as dt
import hashlib
from email import policy
from email.parser import BytesParser

import pytest

from services.ingest.domain.mime import DEFAULT_LIMITS, attachment_content, normalize_message
from services.ingest.domain.mime_bounds import bound_raw_message
from services.ingest.domain.mime_params import parse_mime_field

ATTACHMENT = b"%PDF-1.4 fake pdf bytes"


def two_parts(content_type: bytes, boundary_in_body: bytes = b"abc def") -> bytes:
    return (
        b"From: a@b.test\r\nSubject: folded\r\nMIME-Version: 1.0\r\n" + content_type + b"\r\n\r\n"
        b"--" + boundary_in_body + b"\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--" + boundary_in_body + b"\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n" + ATTACHMENT + b"\r\n"
        b"--" + boundary_in_body + b"--\r\n"
    )


@pytest.mark.parametrize(
    ("content_type", "boundary_in_body"),
    [
        # Folded inside the quotes: unfolding keeps the space (RFC 5322 2.2.3), as the body's delimiters have it.
        (b'Content-Type: multipart/mixed; boundary="abc\r\n def"', b"abc def"),
        (b'Content-Type: multipart/mixed;\r\n\tboundary="abc\r\n\tdef"', b"abc\tdef"),
        # Folded where there was no whitespace (a mailer's bug): the body's delimiters say which was meant.
        (b'Content-Type: multipart/mixed; boundary="abc\r\n def"', b"abcdef"),
        (b'Content-Type: multipart/mixed; boundary="\r\n abcdef"', b"abcdef"),
        # RFC 2231 continuations and an extended value with a charset.
        (b'Content-Type: multipart/mixed; boundary*0="abc"; boundary*1=" def"', b"abc def"),
        (b"Content-Type: multipart/mixed; boundary*=utf-8''abc%20def", b"abc def"),
        (b"Content-Type: multipart/mixed;\r\n boundary*0*=us-ascii'en'abc;\r\n boundary*1=def", b"abcdef"),
    ],
)
def test_folded_and_rfc2231_boundaries_keep_the_mime_structure(
    content_type: bytes, boundary_in_body: bytes
) -> None:
    raw = two_parts(content_type, boundary_in_body)

    mail = normalize_message(raw)

    assert mail.text_body.strip() == "hello"
    [attachment] = mail.attachments
    assert (attachment.part_path, attachment.filename, attachment.content_type) == (
        "2",
        "a.pdf",
        "application/pdf",
    )
    assert attachment_content(raw, "2") == ATTACHMENT


def test_negative_control_the_stdlib_compat32_parser_loses_the_folded_boundary() -> None:
    raw = two_parts(b'Content-Type: multipart/mixed; boundary="abc\r\n def"')

    parsed = BytesParser(policy=policy.compat32).parsebytes(raw)

    assert not parsed.is_multipart()


@pytest.mark.parametrize(
    ("field", "value", "parameters"),
    [
        (b'attachment; filename="a b.pdf"', "attachment", {"filename": "a b.pdf"}),
        (b"attachment; filename*=iso-8859-1''r%E9sum%E9.pdf", "attachment", {"filename": "résumé.pdf"}),
        (
            b"attachment; filename*0*=utf-8''%E6%97%A5; filename*1*=%E6%9C%AC; filename*2=.txt",
            "attachment",
            {"filename": "日本.txt"},
        ),
        (b"inline; filename=\"x.pdf\"; filename*=utf-8''y.pdf", "inline", {"filename": "y.pdf"}),
        (b"attachment; filename=unquoted name.pdf", "attachment", {"filename": "unquoted name.pdf"}),
        (b'attachment;\r\n filename="long\r\n name.pdf"', "attachment", {"filename": "long name.pdf"}),
        (
            b'Text/Plain; CHARSET="UTF-8"; ; junk; format=flowed',
            "text/plain",
            {"charset": "UTF-8", "format": "flowed"},
        ),
    ],
)
def test_mime_parameters_are_read_per_rfc2045_and_rfc2231(
    field: bytes, value: str, parameters: dict[str, str]
) -> None:
    parsed = parse_mime_field(field)

    assert (parsed.value, parsed.parameters) == (value, parameters)


def test_an_outlook_encoded_word_inside_a_quoted_filename_is_decoded() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: application/pdf;\r\n'
        b' name="=?utf-8?B?UmVjaG51bmcgTsKwMS5wZGY=?="\r\n\r\nx\r\n--b--\r\n'
    )

    assert [a.filename for a in normalize_message(raw).attachments] == ["Rechnung N°1.pdf"]


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@b.test\r\nContent-Type: multipart/mixed\r\n\r\nhello there\r\n",
        b'From: a@b.test\r\nContent-Type: multipart/alternative; boundary=""\r\n\r\nhello there\r\n',
        b"From: a@b.test\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\nhello there\r\n",
    ],
)
def test_a_top_level_multipart_without_usable_boundaries_is_text_not_an_attachment(raw: bytes) -> None:
    mail = normalize_message(raw)

    assert mail.attachments == ()
    assert "hello there" in mail.text_body


def test_a_nested_multipart_without_boundary_is_text_of_its_parent() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\nContent-Type: multipart/alternative\r\n'
        b"\r\ninner text\r\n--outer\r\nContent-Type: image/png\r\n\r\npng\r\n--outer--\r\n"
    )

    mail = normalize_message(raw)

    assert "inner text" in mail.text_body
    assert [(a.part_path, a.content_type) for a in mail.attachments] == [("2", "image/png")]
    assert attachment_content(raw, "2") == b"png"


def test_every_described_attachment_of_a_nested_message_is_servable() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
        b"--o\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nforwarded\r\n"
        b'--o\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n--r\r\nContent-Type: image/gif\r\n'
        b"Content-ID: <g@x>\r\n\r\nGIF\r\n--r--\r\n--o--\r\n"
    )

    mail = normalize_message(raw)

    assert [a.part_path for a in mail.attachments] == ["2", "3.1"]
    for attachment in mail.attachments:
        content = attachment_content(raw, attachment.part_path)
        assert content is not None and hashlib.sha256(content).hexdigest() == attachment.sha256


def test_a_flood_of_empty_header_fields_is_cut_at_the_cap_in_one_step() -> None:
    flood = b"Subject: flood\r\n" + b"X:\r\n" * 500_000 + b"From: late@evil.test\r\n\r\nbody\r\n"

    bounded = bound_raw_message(flood, DEFAULT_LIMITS)
    mail = normalize_message(flood)

    assert "limit:header_count" in bounded.defects
    # What the parser sees: the first fields up to the cap, the blank line and the body; nothing of the rest.
    assert bounded.data.count(b"\r\nX:") == DEFAULT_LIMITS.max_header_count - 1
    assert bounded.data.endswith(b"\r\n\r\nbody\r\n")
    assert mail.subject == "flood" and mail.participants == () and mail.text_body.strip() == "body"


def test_a_header_flood_inside_a_part_stops_at_the_parts_delimiter() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        + b"X-F: v\r\n" * 5000
        + b"--b\r\nContent-Type: text/plain\r\n\r\nsecond part\r\n--b--\r\n"
    )

    mail = normalize_message(raw)

    assert "limit:header_count" in mail.defects
    assert "second part" in mail.text_body


def test_deep_nesting_with_many_lines_is_cut_by_the_boundary_check_budget() -> None:
    nesting = b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + b"".join(
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i) for i in range(1, 49)
    )
    raw = nesting + b"--x\r\n" * 200_000

    bounded = bound_raw_message(raw, DEFAULT_LIMITS)

    assert "limit:boundary_checks" in bounded.defects
    assert len(bounded.data) < len(nesting) + 1024
    # Control: the same lines one multipart deep are within the budget.
    shallow = b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n--b0\r\n\r\n' + b"--x\r\n" * 200_000
    assert "limit:boundary_checks" not in bound_raw_message(shallow, DEFAULT_LIMITS).defects


@pytest.mark.parametrize(
    "date",
    ["Fri, 31 Dec 9999 23:59:59 -1200", "Mon, 1 Jan 0001 00:00:00 +1400", "Thu, 32 Dec 2026 99:99:99 +0000"],
)
def test_out_of_range_dates_are_a_defect_never_an_error(date: str) -> None:
    mail = normalize_message(f"Date: {date}\r\nSubject: s\r\n\r\nbody".encode())

    assert mail.header_date is None or mail.header_date.tzinfo == dt.UTC
    assert mail.subject == "s"
    assert "header_date_unparseable" in mail.defects or mail.header_date is not None
