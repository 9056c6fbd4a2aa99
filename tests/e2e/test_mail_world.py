"""Mail as the world writes it, end to end: raw messages delivered into a sandbox mailbox and drops over SMTP, one
per class (address tricks, charsets, broken multiparts, header floods, large drops), observed through threading's
public API. The messages are built here, never taken from a public corpus."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import smtplib
import uuid

import grpc
import pytest

from mailsync.v1 import common_pb2, threading_pb2
from tests.fixtures.stack import E2EStack, eventually, only


def connected_user(stack: E2EStack, location: str) -> tuple[str, str]:
    user = stack.create_user([location])
    address = stack.new_address("user")
    stack.connect_gmail(user.user_id, location, address)
    return user.user_id, address


def deliver_raw(stack: E2EStack, mailbox: str, headers: str | bytes, body: bytes) -> str:
    """Delivers the bytes as written into the mailbox; returns the Message-ID it was given."""
    message_id = f"<{uuid.uuid4().hex}@world.test>"
    head = headers.encode() if isinstance(headers, str) else headers
    raw = f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n".encode() + head + body
    stack.sandbox.deliver(mailbox, raw=base64.urlsafe_b64encode(raw).decode())
    return message_id


def test_R2_an_encoded_word_naming_a_contact_does_not_make_a_stranger_the_sender(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    ceo = stack.new_address("ceo", "company.test")
    contact = stack.upsert_contact(location, ceo, assigned_user_id=user_id)

    spoofed = deliver_raw(
        stack,
        mailbox,
        f"From: =?utf-8?q?x:{ceo};?= <attacker@evil.test>\r\nTo: {mailbox}\r\nSubject: Urgent wire\r\n",
        b"\r\nPlease pay today.\r\n",
    )
    genuine = deliver_raw(
        stack, mailbox, f"From: CEO <{ceo}>\r\nTo: {mailbox}\r\nSubject: Hi\r\n", b"\r\nHi\r\n"
    )

    decision = stack.wait_for_decision(location, spoofed)
    assert not decision.synced and "attacker@evil.test" in decision.reason
    sender = only(
        [
            p
            for p in stack.explain(location, spoofed).participants
            if p.role == common_pb2.PARTICIPANT_ROLE_FROM
        ]
    )
    assert (sender.email, sender.display_name) == ("attacker@evil.test", f"x:{ceo};")
    # Control: the contact's own mail does sync, into the conversation the spoof did not reach.
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=genuine)
    assert [m.rfc_message_id for m in stack.messages_of_contact(location, contact.contact_id)] == [genuine]


SUBJECTS = [
    (b"=?iso-8859-1?Q?Fr\xf6sche?=", "Frösche"),
    (b"=?iso-8859-8-i?B?" + base64.b64encode("שלום".encode("iso8859_8")) + b"?=", "שלום"),
    (b"=?x-mac-cyrillic?B?" + base64.b64encode("Привет".encode("mac_cyrillic")) + b"?=", "Привет"),
    (b"=?ks_c_5601-1987?B?" + base64.b64encode("안녕하세요".encode("cp949")) + b"?=", "안녕하세요"),
    (b"=?x-unknown?Q?caf=E9?=", "café"),
]


def test_subjects_in_every_charset_are_stored_as_a_person_reads_them(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    sender = stack.new_address("zoe", "outside.test")
    contact = stack.upsert_contact(location, sender, assigned_user_id=user_id)

    delivered = [
        (
            deliver_raw(
                stack,
                mailbox,
                f"From: {sender}\r\nTo: {mailbox}\r\nSubject: ".encode() + subject + b"\r\n",
                b"\r\nbody\r\n",
            ),
            decoded,
        )
        for subject, decoded in SUBJECTS
    ]

    for message_id, decoded in delivered:
        stored = stack.wait_for_message(location, contact.contact_id, rfc_message_id=message_id)
        assert stored.subject == decoded
        assert "\\udc" not in stored.subject


def get_attachment(stack: E2EStack, location: str, message_id: str, attachment_id: str) -> bytes:
    responses = list(
        stack.threading.GetAttachment(
            threading_pb2.GetAttachmentRequest(
                location_id=location, message_id=message_id, attachment_id=attachment_id
            )
        )
    )
    return b"".join(r.chunk for r in responses[1:])


def test_broken_multiparts_keep_their_text_and_advertise_only_attachments_that_can_be_served(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    sender = stack.new_address("bob", "outside.test")
    contact = stack.upsert_contact(location, sender, assigned_user_id=user_id)
    content = f"folded-{uuid.uuid4().hex}".encode() * 100
    folded = deliver_raw(
        stack,
        mailbox,
        f'From: {sender}\r\nTo: {mailbox}\r\nSubject: Folded\r\nContent-Type: multipart/mixed; boundary="a\r\n b"\r\n',
        b"\r\n--a b\r\nContent-Type: text/plain\r\n\r\nthe text\r\n--a b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(content).replace(b"\n", b"\r\n")
        + b"--a b--\r\n",
    )
    without_boundary = deliver_raw(
        stack,
        mailbox,
        f"From: {sender}\r\nTo: {mailbox}\r\nSubject: No boundary\r\nContent-Type: multipart/mixed\r\n",
        b"\r\njust text, no parts\r\n",
    )

    stored = stack.wait_for_message(location, contact.contact_id, rfc_message_id=folded)
    assert "the text" in stored.text_body
    described = only(list(stored.attachments))
    assert described.filename == "data.bin"

    def fetched() -> bytes:
        try:
            return get_attachment(stack, location, stored.message_id, described.attachment_id)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            raise AssertionError("not fetched yet") from error

    assert hashlib.sha256(eventually(fetched, timeout=60)).digest() == hashlib.sha256(content).digest()
    plain = stack.wait_for_message(location, contact.contact_id, rfc_message_id=without_boundary)
    assert "just text, no parts" in plain.text_body
    assert list(plain.attachments) == []


def test_a_header_flood_is_stored_and_the_mailbox_keeps_syncing(stack: E2EStack) -> None:
    location = stack.new_id("loc")
    user_id, mailbox = connected_user(stack, location)
    sender = stack.new_address("flo", "outside.test")
    contact = stack.upsert_contact(location, sender, assigned_user_id=user_id)

    flood = deliver_raw(
        stack,
        mailbox,
        f"From: {sender}\r\nTo: {mailbox}\r\nSubject: Flood\r\n" + "X:\r\n" * 200_000,
        b"\r\nafter the flood\r\n",
    )
    later = deliver_raw(
        stack, mailbox, f"From: {sender}\r\nTo: {mailbox}\r\nSubject: Later\r\n", b"\r\nnext\r\n"
    )

    stored = stack.wait_for_message(location, contact.contact_id, rfc_message_id=flood)
    assert stored.subject == "Flood"
    stack.wait_for_message(location, contact.contact_id, rfc_message_id=later)


def drop(stack: E2EStack, user_address: str, bcc_address: str, to: str, *, date: str, body: bytes) -> None:
    raw = (
        f"From: {user_address}\r\nTo: {to}\r\nBcc: {bcc_address}\r\nSubject: Logged\r\nDate: {date}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@gmail.test>\r\n"
    ).encode() + body
    stack.drop_over_smtp(user_address, bcc_address, stack.stamped_by_mx(raw, "gmail.test"))


def test_R9_R16_large_drops_over_smtp_are_taken_within_bounds_and_a_bad_date_is_refused(
    stack: E2EStack,
) -> None:
    location = stack.new_id("loc")
    _user_id, mailbox = connected_user(stack, location)
    bcc_address = stack.bcc_address(location)
    lead = stack.new_address("lead", "elsewhere.test")
    other = stack.new_address("other", "elsewhere.test")

    # 20 MB of empty lines: the drop that once stalled ingest for 33 s and took 1.5 GB.
    drop(
        stack, mailbox, bcc_address, lead, date=email.utils.formatdate(), body=b"\r\n" + b"\r\n" * 10_000_000
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        drop(stack, mailbox, bcc_address, other, date="Fri, 31 Dec 9999 23:59:59 -1200", body=b"\r\nlate\r\n")
    with pytest.raises(smtplib.SMTPDataError) as too_long:
        drop(
            stack,
            mailbox,
            bcc_address,
            other,
            date=email.utils.formatdate(),
            body=b"\r\n" + b"y" * 20_000 + b"\r\n",
        )

    assert refused.value.smtp_code == 550 and b"no readable Date" in refused.value.smtp_error
    assert too_long.value.smtp_code == 500
    contact = eventually(lambda: only(stack.contacts(location, lead)), timeout=60)
    assert contact.created_by_sync
    assert stack.contacts(location, other) == []
