"""Builds the RFC 5322 bytes of an outgoing email with the standard library's email package, strictly.

The email is validated first (services.outbound.domain.email), then serialized with CRLF line ends and 7-bit
safe transfer encodings, then parsed back: if the headers that came out are not exactly the headers that were
set, or a subject or address did not survive the trip, the message is refused rather than sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
from dataclasses import dataclass
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import format_datetime
from enum import Enum
from typing import Any

from services.outbound.domain.email import (
    EmailAddress,
    MessageLimits,
    OutgoingEmail,
    normalize_message_id,
    reply_references,
    validate_email,
)
from services.outbound.domain.errors import HeaderInjection, MessageTooLarge
from services.outbound.domain.send_state import SEND_ID_HEADER

# Message ids are opaque tokens: folding them as unstructured text would turn a long one into an encoded-word,
# which readers no longer recognise as the id, so these headers are folded only between ids.
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
# The stdlib folds address headers with the same encoded-word folder that loses spaces, so we write them too.
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc"})
_PLAIN_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_FOLD_WIDTH = 78
_SEND_ID = re.compile(r"^[0-9a-f]{8,64}$")
# 36 bytes -> 48 base64 characters -> a 60-character encoded-word (RFC 2047 allows 75).
_ENCODED_WORD_BYTES = 36


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header factory, with each header's class composed once.

    HeaderRegistry composes a new class (`type(...)` of the header's class and BaseHeader) on every lookup: for
    each header set, each header read back, and each header count check when one is set, about a tenth of
    building a message. The classes it composes are empty; one per header class serves every message."""

    def __init__(self) -> None:
        super().__init__()
        self._composed: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        header_class = self.registry.get(name.lower(), self.default_class)
        composed = self._composed.get(header_class)
        if composed is None:
            composed = self._composed[header_class] = super().__getitem__(name)
        return composed


_HEADER_CLASSES = _HeaderClasses()


class _StrictPolicy(EmailPolicy):
    """policy.SMTP (CRLF, defects raised) that writes ids, addresses and non-ASCII subjects itself.

    What we write ourselves is built only from validated values, so it needs none of the stdlib's re-parsing.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and not hasattr(value, "name") and name.lower() in _MIME_STRUCTURE_HEADERS:
            if "\n" not in value and "\r" not in value:
                return name, _parsed_structure_header(self.header_factory, name, value)
        return super().header_store_parse(name, value)  # type: ignore[no-any-return]

    def fold(self, name: str, value: Any) -> str:
        return self._fold_our_way(name, value) or super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        folded = self._fold_our_way(name, value)
        return folded.encode("ascii") if folded else super().fold_binary(name, value)

    def _fold_our_way(self, name: str, value: Any) -> str | None:
        if name.lower() in _MIME_STRUCTURE_HEADERS and hasattr(value, "name"):
            return _folded_structure_header(self, name, value)
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep)
        if name.lower() == "subject" and not _folds_safely_as_ascii(str(value)):
            return _fold_tokens(name, _encoded_words(str(value)), self.linesep)
        if name.lower() in _ADDRESS_HEADERS:
            return _fold_addresses(name, value.addresses, self.linesep)
        return None


# Set by the email package itself while it lays out the body (set_content), from a handful of values: parsing
# "text/plain; charset=utf-8" with its header parser costs more than everything else in building a message.
_MIME_STRUCTURE_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


@functools.lru_cache(maxsize=128)
def _parsed_structure_header(factory: Any, name: str, value: str) -> Any:
    # A parsed header is an immutable str, so one parse serves every message. The lines were checked by the caller
    # (as EmailPolicy.header_store_parse checks them); a multipart boundary misses the cache, which is bounded.
    return factory(name, value)


@functools.lru_cache(maxsize=128)
def _folded_structure_header(policy: EmailPolicy, name: str, value: Any) -> str:
    # The parsed header's own fold, as the stdlib folds it (EmailPolicy._fold of a header object), once per value:
    # the same handful of values is folded on every message.
    return value.fold(policy=policy)  # type: ignore[no-any-return]


def _fold_ids(name: str, value: str, linesep: str) -> str:
    return _fold_tokens(name, value.split(), linesep)


def _folds_safely_as_ascii(text: str) -> bool:
    return text.isascii() and all(len(word) <= _FOLD_WIDTH - len("Subject: ") for word in text.split())


def _encoded_words(text: str) -> list[str]:
    # 3.11.7's own encoded-word folder can drop the space at a fold ("Café ☕ Café" -> "Café ☕Café"), so
    # non-ASCII text is written as base64 words that carry their spaces inside, cut at character boundaries.
    chunks: list[bytes] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=" for chunk in chunks]


def _address_tokens(address: Address) -> list[str]:
    addr_spec = address.addr_spec
    name = address.display_name
    if not name:
        return [addr_spec]
    if not name.isascii():
        return [*_encoded_words(name), f"<{addr_spec}>"]
    if _PLAIN_PHRASE.match(name):
        return [*name.split(), f"<{addr_spec}>"]
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return [f'"{quoted}"', f"<{addr_spec}>"]


def _fold_addresses(name: str, addresses: tuple[Address, ...], linesep: str) -> str:
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        address_tokens = _address_tokens(address)
        if index < len(addresses) - 1:
            address_tokens[-1] += ","
        tokens.extend(address_tokens)
    return _fold_tokens(name, tokens, linesep)


def _fold_tokens(name: str, tokens: list[str], linesep: str) -> str:
    """Header lines of whole tokens joined by single spaces, a new line whenever the next one would pass 78."""
    lines = [f"{name}:"]
    for token in tokens:
        if len(lines[-1]) + 1 + len(token) > _FOLD_WIDTH and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {token}"
    return linesep.join(lines) + linesep


STRICT_POLICY = _StrictPolicy(
    linesep="\r\n", cte_type="7bit", raise_on_defect=True, header_factory=_HEADER_CLASSES
)


class _ReadBackPolicy(EmailPolicy):
    """The default policy, as any reader parses the message, except that the MIME structure headers the email
    package wrote itself (`Content-Type: text/plain; charset="utf-8"` and the like) are parsed once per distinct
    value: parsing the same few values again on every message was a sixth of the service's CPU per send under
    load. The parse is the same, so the check sees exactly what it saw before."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if not hasattr(value, "name") and name.lower() in _MIME_STRUCTURE_HEADERS:
            return _parsed_structure_header(self.header_factory, name, "".join(_LINE_BREAK.split(value)))
        return super().header_fetch_parse(name, value)


# The default policy's own unfolding of a header value (str.splitlines would split at more than CR and LF).
_LINE_BREAK = re.compile(r"\n|\r")
READ_BACK_POLICY = _ReadBackPolicy(header_factory=_HEADER_CLASSES)


class BccHandling(Enum):
    """Gmail's messages.send reads Bcc from the raw message and strips it; an SMTP relay must never see it."""

    HEADER = "HEADER"
    ENVELOPE_ONLY = "ENVELOPE_ONLY"


@dataclass(frozen=True)
class BuiltMessage:
    raw: bytes
    message_id: str
    subject: str
    in_reply_to: str | None
    references: tuple[str, ...]
    envelope_sender: str
    envelope_recipients: tuple[str, ...]
    # The validated email the bytes were built from (normalized names, A-label domains, reply subject).
    email: OutgoingEmail


def build_message(
    email: OutgoingEmail,
    *,
    message_id: str,
    date: dt.datetime,
    limits: MessageLimits | None = None,
    bcc: BccHandling = BccHandling.HEADER,
    send_id: str | None = None,
) -> BuiltMessage:
    """The serialized message, or a domain error (InvalidEmail and its kinds) naming what was refused.

    `send_id` goes into the product's own header (SEND_ID_HEADER), by which the send is found in Gmail's Sent
    folder after a crash whatever Gmail did to the Message-ID."""
    limits = limits or MessageLimits()
    email = validate_email(email, limits)
    message_id = normalize_message_id("message_id", message_id)
    if date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    if send_id is not None and not _SEND_ID.match(send_id):
        raise ValueError("send_id must be 8 to 64 lower-case hex digits")

    message = EmailMessage(policy=STRICT_POLICY)
    message["Message-ID"] = message_id
    if send_id is not None:
        message[SEND_ID_HEADER] = send_id
    message["Date"] = format_datetime(date)
    message["From"] = _address(email.sender)
    address_headers = {"To": email.to, "Cc": email.cc}
    if bcc is BccHandling.HEADER:
        address_headers["Bcc"] = email.bcc
    for header, addresses in address_headers.items():
        if addresses:
            message[header] = [_address(address) for address in addresses]
    message["Subject"] = email.subject
    in_reply_to = None
    references: tuple[str, ...] = ()
    if email.reply_to_message is not None:
        in_reply_to = email.reply_to_message.message_id
        references = reply_references(email.reply_to_message)
        message["In-Reply-To"] = in_reply_to
        message["References"] = " ".join(references)
    if email.automatic:
        message["Auto-Submitted"] = "auto-generated"
    _set_body(message, email)

    raw = message.as_bytes()
    _verify_round_trip(raw, message, email, address_headers)
    if len(raw) > limits.max_message_bytes:
        raise MessageTooLarge("message", f"{len(raw)} bytes encoded, the limit is {limits.max_message_bytes}")
    recipients = dict.fromkeys(address.email for address in email.recipients)
    return BuiltMessage(
        raw=raw,
        message_id=message_id,
        subject=email.subject,
        in_reply_to=in_reply_to,
        references=references,
        envelope_sender=email.sender.email,
        envelope_recipients=tuple(recipients),
        email=email,
    )


def _address(address: EmailAddress) -> Address:
    # Validated already (a dot-atom local part, an A-label domain): given as its parts, Address does not parse it
    # again with the stdlib's header parser; the round-trip check still compares what a reader parses.
    local_part, _, domain = address.email.rpartition("@")
    return Address(display_name=address.display_name, username=local_part, domain=domain)


def _set_body(message: EmailMessage, email: OutgoingEmail) -> None:
    if email.html_body and email.text_body:
        message.set_content(email.text_body)
        message.add_alternative(email.html_body, subtype="html")
    elif email.html_body:
        message.set_content(email.html_body, subtype="html")
    else:
        message.set_content(email.text_body)
    for attachment in email.attachments:
        maintype, subtype = attachment.content_type.split("/", 1)
        message.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )


def _verify_round_trip(
    raw: bytes,
    built: EmailMessage,
    email: OutgoingEmail,
    address_headers: dict[str, tuple[EmailAddress, ...]],
) -> None:
    # Defence in depth behind validate_email: whatever slipped through must not change what a reader parses.
    parsed = BytesParser(policy=READ_BACK_POLICY).parsebytes(raw)
    built_parts = list(built.walk())
    parsed_parts = list(parsed.walk())
    if len(built_parts) != len(parsed_parts):
        raise HeaderInjection("message", "the serialized MIME structure differs from the one built")
    for built_part, parsed_part in zip(built_parts, parsed_parts, strict=True):
        if [key.lower() for key in built_part.keys()] != [key.lower() for key in parsed_part.keys()]:
            raise HeaderInjection("headers", "the serialized headers differ from the ones set")
    if " ".join(str(parsed["Subject"]).split()) != email.subject:
        raise HeaderInjection("subject", "the subject does not survive serialization unchanged")
    for header, addresses in {"From": (email.sender,), **address_headers}.items():
        if not addresses:
            continue
        expected = [(_without_spaces(address.display_name), address.email) for address in addresses]
        read_back = parsed[header]
        if not isinstance(read_back, AddressHeader):
            raise HeaderInjection(header.lower(), "the header does not read back as a list of addresses")
        actual = [
            (_without_spaces(address.display_name), address.addr_spec) for address in read_back.addresses
        ]
        if actual != expected:
            raise HeaderInjection(header.lower(), "the addresses do not survive serialization unchanged")


def _without_spaces(display_name: str) -> str:
    # The stdlib's phrase parser keeps the space between adjacent encoded-words that RFC 2047 says to drop, so
    # names are compared without whitespace: no injection consists of whitespace alone.
    return "".join(display_name.split())
