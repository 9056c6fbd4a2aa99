"""MIME normalization of ordinary mail: participants, ids, bodies, attachments and flags come out right."""

from __future__ import annotations

import datetime as dt
import hashlib
from email import policy
from email.parser import BytesParser

import pytest

from services.ingest.domain.message import (
    Direction,
    MailboxCopy,
    MessageSource,
    NormalizedMail,
    ParticipantRole,
)
from services.ingest.domain.mime import attachment_content, normalize_message
from services.ingest.domain.mime_limits import MimeLimits
from tests.fixtures import mime_samples


def _who(mail: NormalizedMail, role: ParticipantRole) -> list[tuple[str, str, int]]:
    return [(p.email, p.display_name, p.position) for p in mail.participants_in(role)]


def test_plain_message_yields_participants_in_header_order_with_positions() -> None:
    mail = normalize_message(mime_samples.plain())

    assert mail.subject == "Quarterly numbers"
    assert _who(mail, ParticipantRole.FROM) == [("alice@example.com", "Alice Sender", 0)]
    assert _who(mail, ParticipantRole.TO) == [("bob@example.org", "Bob", 0), ("carol@example.net", "", 1)]
    assert _who(mail, ParticipantRole.CC) == [("dave@example.org", "Dave", 0)]
    assert mail.rfc_message_id == "<m1@example.com>"
    assert mail.header_date == dt.datetime(2026, 11, 3, 9, 15, tzinfo=dt.UTC)
    assert mail.text_body == "Hello Bob,\n\nthe numbers are in.\n"
    assert mail.html_body == ""
    assert mail.snippet == "Hello Bob, the numbers are in."
    assert mail.attachments == ()
    assert not (mail.forwarded or mail.auto_submitted or mail.list_mail or mail.body_truncated)
    assert mail.defects == ()


def test_multipart_alternative_yields_both_bodies_and_snippet_from_text() -> None:
    mail = normalize_message(mime_samples.alternative())

    assert mail.text_body == "Plain version\n"
    assert "<b>version</b>" in mail.html_body
    assert mail.snippet == "Plain version"
    assert mail.attachments == ()


def test_snippet_falls_back_to_visible_html_text() -> None:
    raw = (
        b"Subject: html only\r\nContent-Type: text/html\r\n\r\n"
        b"<html><head><style>p {color: red}</style></head><body><p>Caf&eacute; &amp; tea</p></body></html>"
    )

    assert normalize_message(raw).snippet == "Café & tea"


def test_attachment_is_described_and_its_bytes_fetchable_by_part_path() -> None:
    raw = mime_samples.with_attachment()
    mail = normalize_message(raw)

    (attachment,) = mail.attachments
    assert (attachment.part_path, attachment.filename, attachment.content_type) == (
        "2",
        "contract.pdf",
        "application/pdf",
    )
    assert attachment.size_bytes == len(mime_samples.PDF_BYTES)
    assert attachment.sha256 == hashlib.sha256(mime_samples.PDF_BYTES).hexdigest()
    assert not attachment.inline
    assert attachment_content(raw, "2") == mime_samples.PDF_BYTES
    assert mail.text_body == "Please find the contract attached.\n"


@pytest.mark.parametrize("missing_path", ["3", "2.1", "0", "x", "1.1.1", ""])
def test_attachment_content_of_a_path_that_names_no_part_is_none(missing_path: str) -> None:
    assert attachment_content(mime_samples.with_attachment(), missing_path) is None


def test_inline_image_in_related_part_is_inline_with_its_content_id() -> None:
    raw = mime_samples.with_inline_image()
    mail = normalize_message(raw)

    (image,) = mail.attachments
    assert image.inline
    assert image.content_id == "logo@example"
    assert image.content_type == "image/png"
    assert attachment_content(raw, image.part_path) == mime_samples.PNG_BYTES
    assert 'src="cid:logo@example"' in mail.html_body


def test_non_ascii_subject_names_body_and_filename_are_decoded() -> None:
    mail = normalize_message(mime_samples.non_ascii())

    assert mail.subject == "Café déjà vu 日本語"
    assert _who(mail, ParticipantRole.FROM) == [("zoe@example.com", "Zoë Ünïcode", 0)]
    assert mail.text_body == "Grüße aus Köln — ça va ?\n"
    assert [a.filename for a in mail.attachments] == ["résumé naïve.csv"]


def test_forward_as_attachment_is_flagged_and_the_original_is_fetchable() -> None:
    raw = mime_samples.forwarded_as_attachment()
    mail = normalize_message(raw)

    assert mail.forwarded
    (original,) = mail.attachments
    assert original.content_type == "message/rfc822"
    content = attachment_content(raw, original.part_path)
    assert content is not None and len(content) == original.size_bytes
    assert normalize_message(content).rfc_message_id == "<orig@example.net>"
    assert mail.rfc_message_id == "<fwd@example.com>"


def test_a_forwarded_message_is_fetched_with_its_header_lines_as_received() -> None:
    original = (
        b"From: Carol <carol@example.net>\r\nSubject: A long subject\r\n that was folded by its sender\r\n"
        b"Message-ID: <orig@example.net>\r\nX-Long: " + b"word " * 40 + b"\r\n\r\nThe original body.\r\n"
    )
    raw = (
        b"Subject: Fwd: A long subject\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + original + b"\r\n--b--\r\n"
    )

    content = attachment_content(raw, "2")

    assert content is not None
    assert content.replace(b"\r\n", b"\n") == original.replace(b"\r\n", b"\n")
    assert normalize_message(raw).attachments[0].sha256 == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("subject", "body", "forwarded"),
    [
        ("Fwd: pricing", "see below", True),
        ("FW: pricing", "see below", True),
        ("Re: Fwd: pricing", "see below", True),
        ("pricing", "note\n---------- Forwarded message ---------\nFrom: x@example.com\n", True),
        ("pricing", "Begin forwarded message:\n\nFrom: x", True),
        ("Forward planning", "see below", False),
        ("Re: pricing", "I forwarded it yesterday", False),
    ],
)
def test_inline_forwards_are_detected_by_subject_or_gmail_marker(
    subject: str, body: str, forwarded: bool
) -> None:
    raw = f"From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}".encode()

    assert normalize_message(raw).forwarded is forwarded


def test_reply_keeps_in_reply_to_and_deduplicated_references_in_order() -> None:
    mail = normalize_message(mime_samples.reply())

    assert mail.in_reply_to == ("<m1@example.com>",)
    assert mail.references == ("<root@example.com>", "<m1@example.com>")
    assert mail.rfc_message_id == "<r2@example.org>"


def test_overlong_references_keep_the_root_and_the_nearest_ancestors() -> None:
    ids = " ".join(f"<r{i}@example.org>" for i in range(10))
    raw = f"Subject: deep thread\r\nReferences: {ids}\r\n\r\nbody".encode()

    mail = normalize_message(raw, limits=MimeLimits(max_message_ids=4))

    assert mail.references == ("<r0@example.org>", "<r7@example.org>", "<r8@example.org>", "<r9@example.org>")
    assert "limit:message_ids" in mail.defects


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Message-ID: <a@b>", "<a@b>"), ("Message-ID: a@b", "<a@b>"), ("Message-ID: not an id", "")],
)
def test_message_id_is_angle_bracketed_or_empty(header: str, expected: str) -> None:
    assert normalize_message(f"{header}\r\n\r\nbody".encode()).rfc_message_id == expected


def test_every_participant_role_is_read_and_duplicates_within_a_role_dropped() -> None:
    raw = (
        b"From: Alice <alice@example.com>\r\n"
        b"Sender: assistant@example.com\r\n"
        b"Reply-To: replies@example.com\r\n"
        b"To: Bob <BOB@Example.org>, bob@example.org, team: x@example.org, y@example.org;\r\n"
        b"Cc: alice@example.com\r\n"
        b"Bcc: hidden@example.com\r\n"
        b"Delivered-To: bob@example.org\r\n"
        b"\r\nbody"
    )
    mail = normalize_message(raw)

    assert [(p.role, p.email, p.position) for p in mail.participants] == [
        (ParticipantRole.FROM, "alice@example.com", 0),
        (ParticipantRole.SENDER, "assistant@example.com", 0),
        (ParticipantRole.REPLY_TO, "replies@example.com", 0),
        (ParticipantRole.TO, "bob@example.org", 0),
        (ParticipantRole.TO, "x@example.org", 1),
        (ParticipantRole.TO, "y@example.org", 2),
        (ParticipantRole.CC, "alice@example.com", 0),
        (ParticipantRole.BCC, "hidden@example.com", 0),
        (ParticipantRole.DELIVERED_TO, "bob@example.org", 0),
    ]


@pytest.mark.parametrize(
    ("labels", "source", "direction"),
    [
        (("INBOX", "UNREAD"), MessageSource.GMAIL_SYNC, Direction.INBOUND),
        (("SENT",), MessageSource.GMAIL_SYNC, Direction.OUTBOUND),
        ((), MessageSource.BCC_DROP, Direction.OUTBOUND),
    ],
)
def test_direction_comes_from_the_sent_label_not_the_from_header(
    labels: tuple[str, ...], source: MessageSource, direction: Direction
) -> None:
    copy = MailboxCopy(mailbox_email="alice@example.com", label_ids=labels)

    # The From header names the mailbox owner in every case: it proves nothing about direction.
    mail = normalize_message(mime_samples.plain(), copy=copy, source=source)

    assert mail.direction is direction
    assert mail.copy is copy


@pytest.mark.parametrize(
    ("headers", "auto_submitted", "list_mail"),
    [
        ("Auto-Submitted: auto-replied", True, False),
        ("Auto-Submitted: no", False, False),
        ("Precedence: bulk", True, False),
        ("Precedence: list", False, True),
        ("List-Id: <news.example.com>", False, True),
        ("List-Unsubscribe: <mailto:u@example.com>", False, True),
        ("X-Auto-Response-Suppress: OOF, DR", True, False),
        ("Return-Path: <>", True, False),
        ("Content-Type: multipart/report; report-type=delivery-status; boundary=x", True, False),
        ("Return-Path: <alice@example.com>", False, False),
    ],
)
def test_automatic_and_list_mail_are_flagged(headers: str, auto_submitted: bool, list_mail: bool) -> None:
    mail = normalize_message(f"From: alice@example.com\r\n{headers}\r\n\r\nbody".encode())

    assert (mail.auto_submitted, mail.list_mail) == (auto_submitted, list_mail)


@pytest.mark.parametrize(
    "sender", ["MAILER-DAEMON@example.com", "noreply@example.com", "no-reply@example.com"]
)
def test_robot_senders_are_flagged_automatic(sender: str) -> None:
    assert normalize_message(f"From: {sender}\r\n\r\nbody".encode()).auto_submitted


def test_long_bodies_are_cut_to_the_cap_and_flagged_truncated() -> None:
    raw = b"Subject: long\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "é".encode() * 5000

    mail = normalize_message(raw, limits=MimeLimits(max_body_chars=1000))

    assert mail.text_body == "é" * 1000
    assert mail.body_truncated


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("café déjà".encode(), "café déjà"),
        ("café déjà".encode("cp1252"), "café déjà"),
        ("“quoted” €5".encode("cp1252"), "“quoted” €5"),
        (b"\x81 undefined in windows-1252", "\ufffd undefined in windows-1252"),
    ],
)
def test_unknown_body_charset_decodes_as_utf8_else_windows_1252_with_a_defect(body: bytes, text: str) -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=x-no-such\r\n\r\n" + body

    mail = normalize_message(raw)

    assert mail.text_body == text
    assert "charset_unknown:x-no-such" in mail.defects


@pytest.mark.parametrize("charset", ["punycode", "IDNA"])
def test_charsets_with_slow_decoders_are_not_on_the_allow_list(charset: str) -> None:
    raw = (
        f"Subject: =?{charset}?q?bcher-kva?=\r\nContent-Type: text/plain; charset={charset}\r\n\r\nbcher-kva"
    )

    mail = normalize_message(raw.encode())

    assert mail.text_body == "bcher-kva"
    assert "bücher" not in mail.subject
    assert f"charset_unknown:{charset}" in mail.defects


def test_a_delivery_report_is_automatic_not_a_forward() -> None:
    raw = (
        b"From: MAILER-DAEMON@example.com\r\nSubject: Undelivered Mail\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; gone@example.org\r\nAction: failed\r\n\r\n--r--\r\n"
    )

    mail = normalize_message(raw)

    assert mail.auto_submitted and not mail.forwarded
    assert [a.content_type for a in mail.attachments] == ["message/delivery-status"]


def test_undecodable_header_bytes_are_replaced_not_raised() -> None:
    raw = b"Subject: =?x-no-such?q?caf=E9?= \xff\xfe\r\nFrom: \xff <a@example.com>\r\n\r\nbody"

    mail = normalize_message(raw)

    # The unknown charset and the raw bytes outside any encoded word both take the fallback (windows-1252 here).
    assert mail.subject == "café ÿþ"
    assert "charset_unknown:x-no-such" in mail.defects
    assert mail.participants_in(ParticipantRole.FROM)[0].email == "a@example.com"
    mail.subject.encode("utf-8")


def test_encoded_newline_in_subject_cannot_smuggle_a_line_break() -> None:
    raw = b"Subject: A =?UTF-8?Q?=0A?=Bcc: injected@evil.example\r\n\r\nbody"

    mail = normalize_message(raw)

    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert mail.participants_in(ParticipantRole.BCC) == ()


def test_size_is_the_raw_size_and_the_date_is_utc() -> None:
    raw = mime_samples.plain()

    mail = normalize_message(raw)

    assert mail.size_bytes == len(raw)
    assert mail.header_date is not None and mail.header_date.utcoffset() == dt.timedelta(0)


def test_a_bare_invalid_base64_attachment_records_the_parser_defect() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n\r\nQUJD=A\r\n--b--\r\n"
    )

    mail = normalize_message(raw)

    assert [a.filename for a in mail.attachments] == ["a.pdf"]
    assert "mime:InvalidBase64LengthDefect" in mail.defects


def test_the_parser_sees_the_raw_bytes_unchanged_for_ordinary_mail() -> None:
    raw = mime_samples.non_ascii()
    reference = BytesParser(policy=policy.default).parsebytes(raw)

    assert normalize_message(raw).subject == reference["subject"]
