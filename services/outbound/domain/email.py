"""The email a CRM user sends, and the checks every user-supplied part passes before any MIME is built.

Header text is refused, not escaped: control characters, line breaks and RFC 2047 encoded-word syntax never
reach the email package, because CPython 3.11.7 decodes encoded-words in header values it refolds and can emit
the decoded line break as a real header boundary (CVE-2024-6923; reference/reliability.md section 5.1).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.outbound.domain.errors import (
    AttachmentsTooLarge,
    HeaderInjection,
    InvalidEmail,
    TooManyRecipients,
)

MIB = 1024 * 1024
# RFC 5322 section 2.1.1: a line is at most 998 characters without its CRLF.
MAX_HEADER_LINE = 998
MAX_SUBJECT_CHARS = 998
MAX_DISPLAY_NAME_CHARS = 256
MAX_FILENAME_CHARS = 255
# Two ids must always fit in one References line, so the first and the parent can always be kept.
MAX_MESSAGE_ID_CHARS = 480

# Cc covers C0, DEL and C1 (including NEL); Zl/Zp are U+2028/U+2029, which some readers treat as line breaks;
# Cs are lone surrogates, which the email package turns into undecodable bytes.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
# "=?charset?q?" or "=?charset?b?": the start of an encoded-word, complete or not ('=?UTF-8?Q?=0A' without the
# closing "?=" is enough for 3.11.7's parser to decode a line feed).
_ENCODED_WORD_START = re.compile(r"=\?[^?]*\?[bq]\?", re.IGNORECASE)
_ATOM_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART = re.compile(rf"^{_ATOM_CHARS}+(?:\.{_ATOM_CHARS}+)*$")
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>$")
_MIME_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"^({_MIME_TOKEN})/({_MIME_TOKEN})$")
_REPLY_PREFIX = re.compile(r"^\s*re\s*(?:\[\d+\]|\(\d+\))?\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class EmailAddress:
    email: str
    display_name: str = ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class ReplyTarget:
    """The message being answered: its Message-ID and its own References (RFC 5322 section 3.6.4)."""

    message_id: str
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutgoingEmail:
    sender: EmailAddress
    to: tuple[EmailAddress, ...]
    subject: str
    cc: tuple[EmailAddress, ...] = ()
    bcc: tuple[EmailAddress, ...] = ()
    text_body: str = ""
    html_body: str = ""
    attachments: tuple[Attachment, ...] = ()
    reply_to_message: ReplyTarget | None = None
    # Workflow mail is automatic: it is stamped Auto-Submitted so auto-responders stay quiet (RFC 3834).
    automatic: bool = False

    @property
    def recipients(self) -> tuple[EmailAddress, ...]:
        return (*self.to, *self.cc, *self.bcc)


@dataclass(frozen=True)
class MessageLimits:
    """R14 and Gmail's limits; the attachment total is configurable per deployment."""

    max_recipients: int = 100
    max_attachment_bytes: int = 25 * MIB
    max_message_bytes: int = 36_700_160


def check_header_text(field_name: str, value: str) -> None:
    """Refuses text that could end a header line or be decoded into one (HeaderInjection names the field)."""
    for position, char in enumerate(value):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise HeaderInjection(field_name, f"control character U+{ord(char):04X} at position {position}")
    if _ENCODED_WORD_START.search(value):
        raise HeaderInjection(field_name, "RFC 2047 encoded-word syntax ('=?charset?q?...') is not allowed")


def check_address(field_name: str, address: EmailAddress) -> EmailAddress:
    """A plain dot-atom addr-spec (IDN domains become A-labels) and a display name that cannot pose as one."""
    check_header_text(f"{field_name}.email", address.email)
    check_header_text(f"{field_name}.display_name", address.display_name)
    email = address.email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise InvalidEmail(f"{field_name}.email", f"{email!r} is not an address of the form local@domain")
    if len(local) > 64 or not _LOCAL_PART.match(local):
        raise InvalidEmail(f"{field_name}.email", f"{email!r} has an unsupported local part")
    ascii_domain = _ascii_domain(f"{field_name}.email", domain)
    email = f"{local}@{ascii_domain}"
    if len(email) > 254:
        raise InvalidEmail(f"{field_name}.email", "an address is at most 254 characters")
    display_name = " ".join(address.display_name.split())
    if len(display_name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidEmail(f"{field_name}.display_name", f"at most {MAX_DISPLAY_NAME_CHARS} characters")
    # A name carrying "@" or angle brackets is how a sender poses as another address in a reader's eyes.
    if any(char in display_name for char in "@<>"):
        raise InvalidEmail(f"{field_name}.display_name", "a display name may not contain '@', '<' or '>'")
    return EmailAddress(email=email, display_name=display_name)


def _ascii_domain(field_name: str, domain: str) -> str:
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise InvalidEmail(field_name, f"{domain!r} is not a valid domain name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise InvalidEmail(field_name, f"{domain!r} is not a valid domain name")
    return ascii_domain.lower()


def normalize_message_id(field_name: str, value: str) -> str:
    """An RFC 5322 msg-id in angle brackets (brackets are added when missing); anything else is refused."""
    check_header_text(field_name, value)
    message_id = value.strip()
    if not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    if len(message_id) > MAX_MESSAGE_ID_CHARS or not _MESSAGE_ID.match(message_id):
        raise InvalidEmail(field_name, f"{value!r} is not a Message-ID of the form <left@right>")
    return message_id


def new_message_id(domain: str, token: Callable[[], str] = lambda: secrets.token_hex(16)) -> str:
    """A fresh, unguessable Message-ID of our domain (128 random bits by default)."""
    return f"<{token()}@{_ascii_domain('message_id_domain', domain)}>"


def reply_subject(subject: str) -> str:
    """The thread's subject with exactly one leading "Re: " (also folds "RE:", "Re[2]:", "Re: Re:")."""
    rest = subject
    while match := _REPLY_PREFIX.match(rest):
        rest = rest[match.end() :]
    return f"Re: {rest}".rstrip()


def reply_references(
    target: ReplyTarget, budget: int = MAX_HEADER_LINE - len("References: ")
) -> tuple[str, ...]:
    """The parent's References then its Message-ID, trimmed from the middle so the whole value fits `budget`.

    The first id (the thread's root) and the most recent ones are what readers thread on, so those stay.
    """
    ids: list[str] = []
    for message_id in (*target.references, target.message_id):
        if message_id not in ids:
            ids.append(message_id)
        else:
            ids.remove(message_id)
            ids.append(message_id)
    while len(ids) > 2 and len(" ".join(ids)) > budget:
        del ids[1]
    if len(" ".join(ids)) > budget:
        ids = ids[-1:]
    return tuple(ids)


def validate_email(email: OutgoingEmail, limits: MessageLimits) -> OutgoingEmail:
    """Every check that needs no encoding, cheapest and most decisive first; returns the normalized email.

    The attachment total comes first (R14: refused before anything else happens).
    """
    attachment_bytes = sum(len(attachment.content) for attachment in email.attachments)
    if attachment_bytes > limits.max_attachment_bytes:
        raise AttachmentsTooLarge(
            "attachments", f"{attachment_bytes} bytes in total, the limit is {limits.max_attachment_bytes}"
        )
    recipient_count = len(email.recipients)
    if recipient_count > limits.max_recipients:
        raise TooManyRecipients(
            "recipients", f"{recipient_count} recipients, at most {limits.max_recipients}"
        )
    if recipient_count == 0:
        raise InvalidEmail("to", "at least one recipient is needed")
    subject = " ".join(email.subject.split())
    check_header_text("subject", email.subject)
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidEmail("subject", f"at most {MAX_SUBJECT_CHARS} characters")
    _check_body("text_body", email.text_body)
    _check_body("html_body", email.html_body)
    reply = None
    if email.reply_to_message is not None:
        reply = ReplyTarget(
            message_id=normalize_message_id("reply_to_message_id", email.reply_to_message.message_id),
            references=tuple(
                normalize_message_id(f"references[{index}]", reference)
                for index, reference in enumerate(email.reply_to_message.references)
            ),
        )
    if reply is not None:
        subject = reply_subject(subject)
    return OutgoingEmail(
        sender=check_address("from", email.sender),
        to=_check_addresses("to", email.to),
        cc=_check_addresses("cc", email.cc),
        bcc=_check_addresses("bcc", email.bcc),
        subject=subject,
        text_body=email.text_body,
        html_body=email.html_body,
        attachments=tuple(
            _check_attachment(index, attachment) for index, attachment in enumerate(email.attachments)
        ),
        reply_to_message=reply,
        automatic=email.automatic,
    )


def _check_addresses(field_name: str, addresses: Sequence[EmailAddress]) -> tuple[EmailAddress, ...]:
    return tuple(check_address(f"{field_name}[{index}]", address) for index, address in enumerate(addresses))


def _check_body(field_name: str, body: str) -> None:
    # Bodies may hold any text, but lone surrogates cannot be encoded in any charset.
    for position, char in enumerate(body):
        if unicodedata.category(char) == "Cs":
            raise InvalidEmail(field_name, f"lone surrogate U+{ord(char):04X} at position {position}")


def _check_attachment(index: int, attachment: Attachment) -> Attachment:
    field_name = f"attachments[{index}]"
    check_header_text(f"{field_name}.filename", attachment.filename)
    # Only the last path component: a name like "..\\..\\startup\\x.exe" must not steer where a reader saves it.
    filename = " ".join(attachment.filename.replace("\\", "/").rsplit("/", 1)[-1].split()) or "attachment"
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidEmail(f"{field_name}.filename", f"at most {MAX_FILENAME_CHARS} characters")
    content_type = (attachment.content_type or "application/octet-stream").strip().lower()
    match = _CONTENT_TYPE.match(content_type)
    if not match:
        raise InvalidEmail(f"{field_name}.content_type", f"{attachment.content_type!r} is not a MIME type")
    # A user's file is opaque bytes to us: never let it declare structure the message would then carry.
    if match.group(1) in {"multipart", "message"}:
        content_type = "application/octet-stream"
    return Attachment(filename=filename, content_type=content_type, content=attachment.content)
