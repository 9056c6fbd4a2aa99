"""The serialized outgoing message: structure, encodings, threading headers, limits, and header-injection safety."""

from __future__ import annotations

import datetime as dt
import string
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st

from services.outbound.domain.email import (
    MIB,
    Attachment,
    EmailAddress,
    MessageLimits,
    OutgoingEmail,
    ReplyTarget,
)
from services.outbound.domain.errors import (
    AttachmentsTooLarge,
    HeaderInjection,
    InvalidEmail,
    MessageTooLarge,
    TooManyRecipients,
)
from services.outbound.mime import BccHandling, build_message

SENT_AT = dt.datetime(2026, 11, 26, 20, 0, tzinfo=dt.UTC)
MESSAGE_ID = "<0123456789abcdef@mail.crm.example>"


def _email(**overrides: object) -> OutgoingEmail:
    values: dict[str, object] = {
        "sender": EmailAddress("ana@example.com", "Ana Souza"),
        "to": (EmailAddress("bob@example.org", "Bob"),),
        "subject": "Proposal",
        "text_body": "Hi Bob,\nthe proposal is attached.\n",
    }
    values.update(overrides)
    return OutgoingEmail(**values)  # type: ignore[arg-type]


def _build(email: OutgoingEmail, **options: object) -> EmailMessage:
    built = build_message(email, message_id=MESSAGE_ID, date=SENT_AT, **options)  # type: ignore[arg-type]
    parsed = BytesParser(policy=policy.default).parsebytes(built.raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_message_has_our_message_id_date_and_the_senders_name() -> None:
    message = _build(_email())
    assert message["Message-ID"] == MESSAGE_ID
    assert message["Date"].datetime == SENT_AT
    assert message["From"].addresses[0].display_name == "Ana Souza"
    assert message["From"].addresses[0].addr_spec == "ana@example.com"
    assert message["MIME-Version"] == "1.0"


def test_every_line_ends_with_crlf_and_the_message_is_7bit() -> None:
    built = build_message(
        _email(subject="Café ☕ " * 30, text_body="Olá, tudo bem?\n" * 3, html_body="<p>Olá</p>"),
        message_id=MESSAGE_ID,
        date=SENT_AT,
    )
    assert b"\n" not in built.raw.replace(b"\r\n", b"")
    assert built.raw.isascii()
    assert all(len(line) <= 998 for line in built.raw.split(b"\r\n"))


def test_non_ascii_names_and_subjects_are_encoded_and_decode_back() -> None:
    message = _build(
        _email(
            sender=EmailAddress("zoe@example.com", "Zoë Ångström, Jr."),
            to=(EmailAddress("kenji@example.jp", "山田 健二"),),
            subject="Заявка № 42 — 日本語",
        )
    )
    assert message["Subject"] == "Заявка № 42 — 日本語"
    assert message["From"].addresses[0].display_name == "Zoë Ångström, Jr."
    assert message["To"].addresses[0].display_name == "山田 健二"


def test_text_and_html_are_alternatives_inside_mixed_with_attachments() -> None:
    message = _build(
        _email(
            html_body="<p>Hi Bob</p>",
            attachments=(
                Attachment("proposal.pdf", "application/pdf", b"%PDF-1.7 fake"),
                Attachment("ñandú notes.txt", "text/plain", "über".encode()),
            ),
        )
    )
    assert message.get_content_type() == "multipart/mixed"
    body, pdf, notes = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in body.iter_parts()] == ["text/plain", "text/html"]
    assert pdf.get_filename() == "proposal.pdf"
    assert pdf.get_content() == b"%PDF-1.7 fake"
    assert notes.get_filename() == "ñandú notes.txt"
    assert notes.get_content_disposition() == "attachment"


@pytest.mark.parametrize(
    ("text_body", "html_body", "content_type"),
    [("plain only", "", "text/plain"), ("", "<b>html only</b>", "text/html"), ("", "", "text/plain")],
)
def test_single_body_messages_are_not_multipart(text_body: str, html_body: str, content_type: str) -> None:
    message = _build(_email(text_body=text_body, html_body=html_body))
    assert message.get_content_type() == content_type


def test_bcc_is_a_header_for_gmail_and_absent_for_smtp_but_always_in_the_envelope() -> None:
    email = _email(bcc=(EmailAddress("boss@example.com"),), cc=(EmailAddress("carol@example.net"),))
    for_gmail = build_message(email, message_id=MESSAGE_ID, date=SENT_AT)
    for_smtp = build_message(email, message_id=MESSAGE_ID, date=SENT_AT, bcc=BccHandling.ENVELOPE_ONLY)
    assert b"\r\nBcc: boss@example.com\r\n" in for_gmail.raw
    assert b"boss@example.com" not in for_smtp.raw
    expected_envelope = ("bob@example.org", "carol@example.net", "boss@example.com")
    assert for_gmail.envelope_recipients == for_smtp.envelope_recipients == expected_envelope


def test_reply_carries_in_reply_to_references_and_one_re_prefix() -> None:
    target = ReplyTarget("<parent@mail.gmail.com>", ("<root@mail.gmail.com>",))
    message = _build(_email(subject="RE: Re: Proposal", reply_to_message=target))
    assert message["Subject"] == "Re: Proposal"
    assert message["In-Reply-To"] == "<parent@mail.gmail.com>"
    assert message["References"].split() == ["<root@mail.gmail.com>", "<parent@mail.gmail.com>"]


def test_long_message_ids_are_folded_between_ids_never_encoded() -> None:
    long_ids = tuple(f"<{'A' * 90}{index}@namprd11.prod.outlook.com>" for index in range(30))
    built = build_message(
        _email(reply_to_message=ReplyTarget(long_ids[-1], long_ids[:-1])), message_id=MESSAGE_ID, date=SENT_AT
    )
    header_block = b"\r\n".join(_header_lines(built.raw))
    assert b"=?" not in header_block
    assert all(len(line) <= 998 for line in _header_lines(built.raw))
    parsed = BytesParser(policy=policy.default).parsebytes(built.raw)
    references = parsed["References"].split()
    assert references[0] == long_ids[0]
    assert references[-1] == long_ids[-1]
    assert references == list(built.references)
    assert parsed["In-Reply-To"] == long_ids[-1]


def test_R14_a_26_mb_attachment_is_refused() -> None:
    email = _email(attachments=(Attachment("video.mp4", "video/mp4", bytes(26 * MIB)),))
    with pytest.raises(AttachmentsTooLarge):
        build_message(email, message_id=MESSAGE_ID, date=SENT_AT)


def test_101_recipients_are_refused() -> None:
    email = _email(to=tuple(EmailAddress(f"lead{index}@example.org") for index in range(101)))
    with pytest.raises(TooManyRecipients):
        build_message(email, message_id=MESSAGE_ID, date=SENT_AT)


def test_the_encoded_message_is_capped() -> None:
    # 900 KB of attachment passes the 1 MB attachment limit but base64 makes the message exceed 1 MB.
    email = _email(attachments=(Attachment("a.bin", "application/octet-stream", bytes(900 * 1024)),))
    limits = MessageLimits(max_attachment_bytes=MIB, max_message_bytes=MIB)
    with pytest.raises(MessageTooLarge):
        build_message(email, message_id=MESSAGE_ID, date=SENT_AT, limits=limits)
    assert build_message(email, message_id=MESSAGE_ID, date=SENT_AT, limits=MessageLimits()).raw


def test_gmail_cap_is_the_default() -> None:
    assert MessageLimits().max_message_bytes == 36_700_160
    assert MessageLimits().max_attachment_bytes == 25 * MIB


# reference/reliability.md section 5.1 (exp7, exp8): inputs that make 3.11.7's email package emit a forged header
# or end the header block early (CVE-2024-6923).
CVE_2024_6923_SUBJECTS = [
    "A é subject=?UTF-8?Q?=0A?=Bcc: injected@evil.example",
    "=?UTF-8?Q?=0A",
    "é =?utf-8?b?=0A",
    "x =?UTF-8?Q?=0D=0A?=Bcc: injected@evil.example",
    "=?utf-8?b?DQpCY2M6IGluamVjdGVkQGV2aWwuZXhhbXBsZQ==?=",
]


def test_the_running_python_is_vulnerable_so_the_regression_cases_mean_something() -> None:
    # Negative control: without our checks, the first case really does forge a Bcc header on this interpreter.
    message = EmailMessage(policy=policy.SMTP)
    message["To"] = "bob@example.org"
    message["Subject"] = CVE_2024_6923_SUBJECTS[0]
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    assert "Bcc" in parsed


@pytest.mark.parametrize("subject", CVE_2024_6923_SUBJECTS)
def test_CVE_2024_6923_encoded_word_newlines_in_the_subject_are_refused(subject: str) -> None:
    with pytest.raises(HeaderInjection) as refused:
        build_message(_email(subject=subject), message_id=MESSAGE_ID, date=SENT_AT)
    assert refused.value.field == "subject"


@pytest.mark.parametrize("name", CVE_2024_6923_SUBJECTS[1:])
def test_CVE_2024_6923_encoded_word_newlines_in_names_and_filenames_are_refused(name: str) -> None:
    with pytest.raises(HeaderInjection) as refused:
        build_message(
            _email(to=(EmailAddress("bob@example.org", name),)), message_id=MESSAGE_ID, date=SENT_AT
        )
    assert refused.value.field == "to[0].display_name"
    with pytest.raises(HeaderInjection) as refused:
        build_message(
            _email(attachments=(Attachment(name, "text/plain", b"x"),)), message_id=MESSAGE_ID, date=SENT_AT
        )
    assert refused.value.field == "attachments[0].filename"


# In the spirit of the reference's exp8 dictionary: line breaks, encoded-word pieces, header-looking text, MIME
# syntax, quoting characters, non-ASCII.
NASTY_TOKENS = [
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\t",
    "\x85",
    "\u2028",
    "=?UTF-8?Q?=0A?=",
    "=?UTF-8?Q?=0A",
    "=?utf-8?b?",
    "=0A",
    "?=",
    "Bcc: injected@evil.example",
    "X-Injected: yes",
    "--==boundary==",
    "é",
    ":",
    ";",
    '"',
    "\\",
    "<",
    "@",
    " ",
    "a" * 80,
    "filename*=utf-8''x",
]
# Mostly dictionary tokens and ASCII (non-ASCII header text takes our own folding path, ASCII the stdlib's), and
# short: the known attacks are one or two tokens long.
nasty_text = st.lists(
    st.one_of(
        st.sampled_from(NASTY_TOKENS),
        st.sampled_from(NASTY_TOKENS),
        st.sampled_from(NASTY_TOKENS),
        st.text(alphabet=string.printable, max_size=6),
        st.text(max_size=3),
    ),
    max_size=4,
).map("".join)

# Every header the fixed structure below produces; user text may fill them but never add or remove one.
EXPECTED_TOP_LEVEL = {
    "message-id",
    "date",
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
}


def _stdlib_alone_changes_the_headers(subject: str) -> bool:
    message = EmailMessage(policy=policy.SMTP)
    message["To"] = "bob@example.org"
    try:
        message["Subject"] = subject
        raw = message.as_bytes()
    except (ValueError, UnicodeError):
        return False
    return sorted(BytesParser(policy=policy.default).parsebytes(raw).keys()) != ["Subject", "To"]


def test_the_hostile_text_strategy_finds_the_injection_in_the_unprotected_stdlib() -> None:
    # Negative control for the property below: the same generator breaks the email package when nothing guards it.
    counterexample = find(
        nasty_text, _stdlib_alone_changes_the_headers, settings=settings(max_examples=2000, derandomize=True)
    )
    assert _stdlib_alone_changes_the_headers(counterexample)


USER_FIELDS = (
    "subject",
    "sender_name",
    "to_name",
    "cc_name",
    "bcc_name",
    "filename",
    "text_body",
    "html_body",
)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    nasty_fields=st.dictionaries(st.sampled_from(USER_FIELDS), nasty_text, min_size=1, max_size=3),
    plain_fields=st.fixed_dictionaries(
        {name: st.text(alphabet="abc xyzé", max_size=10) for name in USER_FIELDS}
    ),
)
def test_no_user_input_can_change_the_set_of_header_names(
    nasty_fields: dict[str, str], plain_fields: dict[str, str]
) -> None:
    # A few fields at a time get hostile text, so that most examples are accepted and their output is checked.
    fields = {**plain_fields, **nasty_fields}
    subject, sender_name, to_name, cc_name, bcc_name, filename, text_body, html_body = (
        fields[name] for name in USER_FIELDS
    )
    email = OutgoingEmail(
        sender=EmailAddress("ana@example.com", sender_name),
        to=(EmailAddress("bob@example.org", to_name),),
        cc=(EmailAddress("carol@example.net", cc_name),),
        bcc=(EmailAddress("dan@example.com", bcc_name),),
        subject=subject,
        text_body=text_body + "x",
        html_body=html_body + "<p>x</p>",
        attachments=(Attachment(filename, "application/pdf", b"%PDF"),),
        reply_to_message=ReplyTarget("<parent@mail.example>", ("<root@mail.example>",)),
    )
    try:
        built = build_message(email, message_id=MESSAGE_ID, date=SENT_AT)
    except InvalidEmail:
        event("refused")
        return
    event("accepted")
    for parse_policy in (policy.default, policy.compat32):
        parsed = BytesParser(policy=parse_policy).parsebytes(built.raw)
        assert {name.lower() for name in parsed.keys()} == EXPECTED_TOP_LEVEL
        assert len(parsed.keys()) == len(EXPECTED_TOP_LEVEL)
        parts = list(parsed.walk())
        assert [part.get_content_type() for part in parts] == [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "application/pdf",
        ]
        assert {name.lower() for name in parts[-1].keys()} == {
            "content-type",
            "content-transfer-encoding",
            "content-disposition",
            "mime-version",
        }


# Printable text of any script, without the characters and sequences the checks refuse.
printable_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120
).filter(lambda text: "=?" not in text and not any(char in text for char in "@<>"))


@settings(max_examples=100, deadline=None)
@given(subject=printable_text, name=printable_text, filename=printable_text)
def test_acceptable_text_of_any_script_survives_the_trip_unchanged(
    subject: str, name: str, filename: str
) -> None:
    email = _email(
        subject=subject,
        to=(EmailAddress("bob@example.org", name),),
        attachments=(Attachment(filename, "application/pdf", b"%PDF"),),
    )
    message = _build(email)
    assert " ".join(str(message["Subject"]).split()) == " ".join(subject.split())
    # Whitespace is compared out: the stdlib parser keeps the space between adjacent encoded-words (RFC 2047
    # drops it), and the encoded words carry the name's own spaces inside.
    assert "".join(message["To"].addresses[0].display_name.split()) == "".join(name.split())
    attachment = next(part for part in message.walk() if part.get_content_disposition() == "attachment")
    last_component = filename.replace("\\", "/").rsplit("/", 1)[-1]
    assert attachment.get_filename() == (" ".join(last_component.split()) or "attachment")
