"""The pure checks on an outgoing email: header text, addresses, reply subjects and References, limits (R14)."""

from __future__ import annotations

import pytest

from services.outbound.domain.email import (
    MIB,
    Attachment,
    EmailAddress,
    MessageLimits,
    OutgoingEmail,
    ReplyTarget,
    check_address,
    check_header_text,
    new_message_id,
    normalize_message_id,
    reply_references,
    reply_subject,
    validate_email,
)
from services.outbound.domain.errors import (
    AttachmentsTooLarge,
    HeaderInjection,
    InvalidEmail,
    TooManyRecipients,
)
from services.runtime.errors import InvalidArgument


def _email(**overrides: object) -> OutgoingEmail:
    values: dict[str, object] = {
        "sender": EmailAddress("ana@example.com", "Ana"),
        "to": (EmailAddress("bob@example.org"),),
        "subject": "Hello",
        "text_body": "Hi Bob",
    }
    values.update(overrides)
    return OutgoingEmail(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "line\r\nBcc: x@evil.example",
        "line\nBcc: x@evil.example",
        "line\rBcc: x@evil.example",
        "nul\x00byte",
        "tab\tinside",
        "escape\x1b[31m",
        "delete\x7f",
        "next line\x85(C1 NEL)",
        "c1\x9b",
        "line separator\u2028here",
        "paragraph separator\u2029here",
        "surrogate\ud800",
        "=?UTF-8?Q?=0A?=Bcc: injected@evil.example",
        "A é subject=?UTF-8?Q?=0A?=Bcc: injected@evil.example",
        "=?UTF-8?Q?=0A",
        "é =?utf-8?b?=0A",
        "=?utf-8?B?Cg==?=",
        "=?iso-8859-1*en?q?x?=",
        "harmless looking =?us-ascii?Q?hello?=",
    ],
)
def test_header_text_with_control_characters_or_encoded_words_is_refused(text: str) -> None:
    with pytest.raises(HeaderInjection) as refused:
        check_header_text("subject", text)
    assert refused.value.field == "subject"
    assert isinstance(refused.value, InvalidArgument)
    assert refused.value.metadata == {"field": "subject"}


@pytest.mark.parametrize(
    "text",
    ["Quarterly report", "Zoë's café ☕", "What is x=? and y?=", "日本語の件名", "100% =? done", "a" * 998],
)
def test_ordinary_header_text_is_accepted(text: str) -> None:
    check_header_text("subject", text)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (EmailAddress("Bob@Example.ORG", "  Bob   Builder "), EmailAddress("Bob@example.org", "Bob Builder")),
        (EmailAddress("o'neil+tag@mail.example.com"), EmailAddress("o'neil+tag@mail.example.com")),
        (EmailAddress("zoe@bücher.example", "Zoë"), EmailAddress("zoe@xn--bcher-kva.example", "Zoë")),
        (
            EmailAddress("ana@example.com", 'Ana "A" Smith, Jr.'),
            EmailAddress("ana@example.com", 'Ana "A" Smith, Jr.'),
        ),
    ],
)
def test_valid_addresses_are_normalized(address: EmailAddress, expected: EmailAddress) -> None:
    assert check_address("to[0]", address) == expected


@pytest.mark.parametrize(
    ("address", "field"),
    [
        (EmailAddress("not-an-address"), "to[0].email"),
        (EmailAddress("@example.com"), "to[0].email"),
        (EmailAddress("bob@"), "to[0].email"),
        (EmailAddress("bob@localhost"), "to[0].email"),
        (EmailAddress("alice@example.org)<bob@example.org>"), "to[0].email"),
        (EmailAddress('"quoted local"@example.org'), "to[0].email"),
        (EmailAddress("a..b@example.org"), "to[0].email"),
        (EmailAddress("bob@exa_mple.org"), "to[0].email"),
        (EmailAddress("bob@-example.org"), "to[0].email"),
        (EmailAddress("bób@example.org"), "to[0].email"),
        (EmailAddress("bob@example.org", "attacker@evil.example"), "to[0].display_name"),
        (EmailAddress("bob@example.org", "Bob <boss@bank.example>"), "to[0].display_name"),
        (EmailAddress("bob@example.org\r\nBcc: x@evil.example"), "to[0].email"),
        (EmailAddress("bob@example.org", "Bob\nBcc: x@evil.example"), "to[0].display_name"),
        (EmailAddress("bob@example.org", "=?utf-8?q?Bob=0A?="), "to[0].display_name"),
    ],
)
def test_invalid_addresses_are_refused_naming_the_field(address: EmailAddress, field: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        check_address("to[0]", address)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Lunch", "Re: Lunch"),
        ("Re: Lunch", "Re: Lunch"),
        ("RE: Lunch", "Re: Lunch"),
        ("re: Lunch", "Re: Lunch"),
        ("Re: Re: RE: Lunch", "Re: Lunch"),
        ("Re[2]: Lunch", "Re: Lunch"),
        ("Re(3): Lunch", "Re: Lunch"),
        ("Re : Lunch", "Re: Lunch"),
        ("Re:Lunch", "Re: Lunch"),
        ("Fwd: Lunch", "Re: Fwd: Lunch"),
        ("Re: Fwd: Re: Lunch", "Re: Fwd: Re: Lunch"),
        ("Regarding lunch", "Re: Regarding lunch"),
        ("", "Re:"),
    ],
)
def test_reply_subject_has_exactly_one_re_prefix(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_reply_references_append_the_parent_after_its_references() -> None:
    target = ReplyTarget("<p@x.example>", ("<root@x.example>", "<mid@x.example>"))
    assert reply_references(target) == ("<root@x.example>", "<mid@x.example>", "<p@x.example>")


def test_reply_references_trim_the_middle_keeping_the_root_and_the_most_recent() -> None:
    references = tuple(f"<{index:03d}-{'r' * 40}@x.example>" for index in range(60))
    target = ReplyTarget("<parent@x.example>", references)
    trimmed = reply_references(target)
    assert len(" ".join(trimmed)) <= 998 - len("References: ")
    assert trimmed[0] == references[0]
    assert trimmed[-1] == "<parent@x.example>"
    assert trimmed[-2] == references[-1]
    assert list(trimmed[1:-1]) == [ref for ref in references if ref in trimmed[1:-1]]
    assert len(trimmed) < len(references)


def test_reply_references_do_not_repeat_the_parent() -> None:
    target = ReplyTarget("<p@x.example>", ("<root@x.example>", "<p@x.example>"))
    assert reply_references(target) == ("<root@x.example>", "<p@x.example>")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("<a@b.example>", "<a@b.example>"), ("a.b@c.example", "<a.b@c.example>"), (" <x@y> ", "<x@y>")],
)
def test_message_ids_are_normalized_to_angle_brackets(value: str, expected: str) -> None:
    assert normalize_message_id("reply_to_message_id", value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "<>", "<no-at-sign>", "<a@b> <c@d>", "<a@b>\r\nBcc: x@y", "<a<b@c>", "<" + "a" * 500 + "@b>"],
)
def test_malformed_message_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        normalize_message_id("reply_to_message_id", value)
    assert refused.value.field == "reply_to_message_id"


def test_new_message_ids_are_of_our_domain_and_unguessable() -> None:
    ids = {new_message_id("mail.example.com") for _ in range(1000)}
    assert len(ids) == 1000
    for message_id in ids:
        local, domain = message_id.strip("<>").split("@")
        assert domain == "mail.example.com"
        assert len(local) == 32


def test_R14_attachments_over_the_configured_total_are_refused() -> None:
    email = _email(attachments=(Attachment("big.bin", "application/octet-stream", bytes(26 * MIB)),))
    with pytest.raises(AttachmentsTooLarge) as refused:
        validate_email(email, MessageLimits())
    assert refused.value.field == "attachments"


def test_R14_attachment_total_is_checked_before_anything_else() -> None:
    # Every other field is bad too: the size refusal must still be the one reported.
    email = _email(
        subject="bad\r\nsubject",
        to=tuple(EmailAddress(f"r{index}@example.org") for index in range(150)),
        attachments=(
            Attachment("a.bin", "application/octet-stream", bytes(6 * MIB)),
            Attachment("b.bin", "application/octet-stream", bytes(6 * MIB)),
        ),
    )
    with pytest.raises(AttachmentsTooLarge):
        validate_email(email, MessageLimits(max_attachment_bytes=10 * MIB))


def test_R14_attachments_exactly_at_the_limit_are_accepted() -> None:
    email = _email(attachments=(Attachment("a.bin", "application/octet-stream", bytes(1000)),))
    validate_email(email, MessageLimits(max_attachment_bytes=1000))


def test_101_recipients_are_refused_and_100_accepted() -> None:
    recipients = [EmailAddress(f"r{index}@example.org") for index in range(101)]
    too_many = _email(to=tuple(recipients[:50]), cc=tuple(recipients[50:90]), bcc=tuple(recipients[90:]))
    with pytest.raises(TooManyRecipients) as refused:
        validate_email(too_many, MessageLimits())
    assert refused.value.field == "recipients"
    validate_email(_email(to=tuple(recipients[:60]), bcc=tuple(recipients[60:100])), MessageLimits())


def test_an_email_without_recipients_is_refused() -> None:
    with pytest.raises(InvalidEmail) as refused:
        validate_email(_email(to=()), MessageLimits())
    assert refused.value.field == "to"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"subject": "Hi\nBcc: x@evil.example"}, "subject"),
        ({"sender": EmailAddress("ana@example.com", "Ana\r\nX-Evil: 1")}, "from.display_name"),
        (
            {"cc": (EmailAddress("c@example.org"), EmailAddress("d@example.org", "D\x00"))},
            "cc[1].display_name",
        ),
        ({"bcc": (EmailAddress("bad"),)}, "bcc[0].email"),
        ({"attachments": (Attachment("a\r\nb.pdf", "application/pdf", b"x"),)}, "attachments[0].filename"),
        (
            {"attachments": (Attachment("a.pdf", "application/pdf\r\nX: y", b"x"),)},
            "attachments[0].content_type",
        ),
        ({"attachments": (Attachment("a.pdf", "not a type", b"x"),)}, "attachments[0].content_type"),
        ({"reply_to_message": ReplyTarget("<p@x>", ("<ok@x>", "bad id"))}, "references[1]"),
        ({"reply_to_message": ReplyTarget("=?utf-8?q?=0A?=@x")}, "reply_to_message_id"),
        ({"text_body": "lone \udc80 surrogate"}, "text_body"),
    ],
)
def test_each_bad_field_is_refused_by_name(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEmail) as refused:
        validate_email(_email(**overrides), MessageLimits())
    assert refused.value.field == field


def test_structural_attachment_types_become_opaque_bytes() -> None:
    email = _email(attachments=(Attachment("forward.eml", "message/rfc822", b"Subject: x\r\n\r\nbody"),))
    assert validate_email(email, MessageLimits()).attachments[0].content_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Startup\\run.exe", "run.exe"),
        ("dir/", "attachment"),
        ("  spaced   name .txt ", "spaced name .txt"),
        ("", "attachment"),
    ],
)
def test_attachment_filenames_keep_only_their_last_path_component(filename: str, expected: str) -> None:
    email = _email(attachments=(Attachment(filename, "application/octet-stream", b"x"),))
    assert validate_email(email, MessageLimits()).attachments[0].filename == expected
