"""RFC 822 helpers: parse a raw message into Gmail's MessagePart tree, edit top-level headers, build test mail."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def b64url(data: bytes) -> str:
    """Padded base64url, the form Gmail uses for `raw`."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_unpadded(data: bytes) -> str:
    """Unpadded base64url, the form Gmail uses for body and attachment `data`."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; standard-alphabet input is tolerated as Gmail does."""
    cleaned = text.strip().replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))


def split_header_block(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (header block, separator, body) of a raw message."""
    found = _HEADER_END.search(raw)
    if not found:
        return raw, b"", b""
    return raw[: found.start()], raw[found.start() : found.end()], raw[found.end() :]


def _header_lines(block: bytes) -> list[bytes]:
    lines: list[bytes] = []
    for line in re.split(rb"\r?\n", block):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b"\r\n" + line
        elif line:
            lines.append(line)
    return lines


def edit_headers(raw: bytes, remove: set[str], add: list[tuple[str, str]]) -> bytes:
    """Drop headers named in `remove` (case-insensitive) and append `add`, leaving the body byte-identical."""
    block, separator, body = split_header_block(raw)
    newline = b"\r\n" if b"\r\n" in block or not block else b"\n"
    lowered = {name.lower() for name in remove}
    kept = [
        line
        for line in _header_lines(block)
        if line.split(b":", 1)[0].strip().decode("latin-1").lower() not in lowered
    ]
    kept.extend(f"{name}: {value}".encode() for name, value in add)
    return newline.join(kept) + (separator or newline * 2) + body


def new_message_id(domain: str = "mail.gmail.com") -> str:
    return make_msgid(domain=domain)


_MESSAGE_ID_HEADER = re.compile(rb"^(message-id:[ \t]*)<[^<>\s]+@([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)


def restamp_message_id(raw: bytes) -> bytes:
    """The same message with a new Message-ID (same domain), the rest byte-identical: a copy built in microseconds
    instead of building the message again. Without a Message-ID header the message is returned as it is."""
    block, separator, body = split_header_block(raw)

    def fresh(found: re.Match[bytes]) -> bytes:
        return found.group(1) + new_message_id(found.group(2).decode("ascii", "replace")).encode()

    return _MESSAGE_ID_HEADER.sub(fresh, block, count=1) + separator + body


def message_ids(value: str | None) -> list[str]:
    """The `<...>` identifiers in a Message-ID, In-Reply-To or References value."""
    return re.findall(r"<[^<>\s]+>", value or "")


_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|sv|antw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def normalized_subject(subject: str | None) -> str:
    """Subject without reply/forward prefixes and with collapsed spaces, for thread matching."""
    stripped = _SUBJECT_PREFIX.sub("", subject or "")
    return " ".join(stripped.split()).lower()


def addresses(*values: str | None) -> list[str]:
    """Lower-cased addresses from header values."""
    return [addr.lower() for _, addr in getaddresses([v for v in values if v]) if addr]


@dataclass
class ParsedPart:
    """One node of the MIME tree, with its decoded body bytes for leaves."""

    part_id: str
    mime_type: str
    filename: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    children: list[ParsedPart] = field(default_factory=list)


@dataclass
class ParsedMessage:
    """What Gmail derives from raw bytes once: top-level headers, the part tree and the snippet."""

    headers: list[tuple[str, str]]
    root: ParsedPart
    snippet: str

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def leaves(self) -> list[ParsedPart]:
        found: list[ParsedPart] = []
        stack = [self.root]
        while stack:
            part = stack.pop()
            if part.children:
                stack.extend(reversed(part.children))
            else:
                found.append(part)
        return found


def _header_text(value: Any) -> str:
    text = str(value)
    return " ".join(text.replace("\r\n", "\n").split("\n")) if "\n" in text else text


def _parse_part(node: Message, part_id: str) -> ParsedPart:
    headers = [(k, _header_text(v)) for k, v in node.items()]
    filename = node.get_filename() or ""
    part = ParsedPart(part_id=part_id, mime_type=node.get_content_type(), filename=filename, headers=headers)
    if node.is_multipart():
        payload = node.get_payload()
        for index, child in enumerate(payload if isinstance(payload, list) else []):
            child_id = str(index) if part_id == "" else f"{part_id}.{index}"
            part.children.append(_parse_part(child, child_id))
    else:
        decoded = node.get_payload(decode=True)
        part.body = decoded if isinstance(decoded, bytes) else b""
    return part


def _snippet(root: ParsedPart) -> str:
    stack = [root]
    while stack:
        part = stack.pop(0)
        if part.children:
            stack[:0] = part.children
        elif part.mime_type == "text/plain" and not part.filename:
            text = part.body.decode("utf-8", errors="replace")
            return " ".join(text.split())[:200]
    if root.mime_type == "text/html":
        return " ".join(strip_tags(root.body.decode("utf-8", errors="replace")).split())[:200]
    return ""


_TAG = re.compile(r"<[^>]+>")


def strip_tags(html: str) -> str:
    """Every `<...>` tag replaced by a space, in time linear in the text.

    `<[^>]+>` alone is quadratic when many `<` have no `>` after them (10 MB of `<` took hours): each one scans
    to the end. After the last `>` no tag can close, so only the text up to it is searched; before it, every
    attempt ends at the first `>` and the match consumes what it scanned.
    """
    last = html.rfind(">")
    return _TAG.sub(" ", html[: last + 1]) + html[last + 1 :]


def parse(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 822 bytes (CRLF or LF) into the tree Gmail exposes as `payload`."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    root = _parse_part(message, "")
    return ParsedMessage(headers=root.headers, root=root, snippet=_snippet(root))


@dataclass
class AttachmentSpec:
    """An attachment for a message built from fields."""

    filename: str
    content_type: str
    data: bytes


def build_message(
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    html: str | None = None,
    attachments: list[AttachmentSpec] | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """Build RFC 822 bytes (CRLF) from fields, the way an outside mail client would."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=sender.rsplit("@", 1)[-1].strip(">") or "example.com")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for attachment in attachments or []:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return msg.as_bytes(policy=email.policy.SMTP)
