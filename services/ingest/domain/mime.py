"""MIME normalization: raw RFC 5322 bytes to a `NormalizedMail`, never raising, whatever the input.

The raw bytes first go through `bound_raw_message` (size, header, depth and part caps), then the stdlib
parser. The structure is parsed with `compat32`, whose header handling is cheap, and only the fields the
result needs go through the modern header parser (see mime_headers). Anything that still fails is
recorded in `defects` and the message is published with whatever could be read.
"""

from __future__ import annotations

import binascii
import hashlib
import html
import re
from dataclasses import dataclass, field
from email import policy
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import Compat32

from services.ingest.domain.automail import is_auto_submitted, is_list_mail
from services.ingest.domain.message import (
    Attachment,
    Direction,
    MailboxCopy,
    MessageSource,
    NormalizedMail,
    Participant,
    ParticipantRole,
)
from services.ingest.domain.mime_addresses import AddressReader
from services.ingest.domain.mime_bounds import bound_raw_message
from services.ingest.domain.mime_charsets import decode_bytes
from services.ingest.domain.mime_headers import (
    clean_header_text,
    clean_text,
    decoded_text,
    decoded_value,
    header_date,
    message_ids,
    raw_values,
)
from services.ingest.domain.mime_limits import MimeLimits
from services.ingest.domain.mime_params import MimeField, parse_mime_field

DEFAULT_LIMITS = MimeLimits()
SENT_LABEL = "SENT"

_ROLE_FIELDS = (
    (ParticipantRole.FROM, "from"),
    (ParticipantRole.SENDER, "sender"),
    (ParticipantRole.REPLY_TO, "reply-to"),
    (ParticipantRole.TO, "to"),
    (ParticipantRole.CC, "cc"),
    (ParticipantRole.BCC, "bcc"),
    (ParticipantRole.DELIVERED_TO, "delivered-to"),
)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|sv)\s*:\s*)*(?:fwd?|fw|wg|tr)\s*:", re.IGNORECASE)
# Patterns run on hostile text, so none may backtrack super-linearly (a run of dashes is tried once).
_FORWARD_MARKER = re.compile(
    r"(?<!-)-{5,}[ \t]*Forwarded message[ \t]*-{5}|^Begin forwarded message:", re.MULTILINE
)
_HTML_INVISIBLE_START = re.compile(r"<(script|style|head)\b", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
_WHITESPACE = re.compile(r"\s+")
_MARKER_SCAN_CHARS = 64 * 1024


class _VerbatimHeaders(Compat32):
    """Serializes header fields exactly as received. compat32 refolds every field through Header.encode,
    which takes a quarter of a second per 64 KiB hostile field (and minutes without a line length)."""

    def fold(self, name: str, value: object) -> str:
        return f"{name}: {value}{self.linesep}"

    def fold_binary(self, name: str, value: object) -> bytes:
        return self.fold(name, value).encode("ascii", "surrogateescape")


_VERBATIM = _VerbatimHeaders()
_SNIPPET_SOURCE_CHARS = 16 * 1024


@dataclass
class _Content:
    """What the walk over the MIME tree collects."""

    limits: MimeLimits
    defects: list[str]
    text_parts: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    forwarded_part: bool = False
    body_cut: bool = False
    parts_seen: int = 0


def normalize_message(
    raw: bytes,
    *,
    copy: MailboxCopy | None = None,
    source: MessageSource = MessageSource.GMAIL_SYNC,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> NormalizedMail:
    """Normalize one raw message. Never raises: what cannot be read is listed in the result's `defects`."""
    copy = copy or MailboxCopy()
    defects: list[str] = []
    bounded = bound_raw_message(raw, limits)
    defects.extend(bounded.defects)
    message = _parse(bounded.data, defects)
    content = _Content(limits=limits, defects=defects)
    if message is not None:
        try:
            _walk(message, "", 0, content, in_related=False)
        except RecursionError:
            defects.append("limit:depth:recursion")
        except Exception as error:
            defects.append(f"parse_failed:body:{type(error).__name__}")
    return _assemble(raw, message, content, copy, source, limits, defects)


_FEED_CHUNK = 1024 * 1024
# Smaller bodies are decoded whole (cheaper than slicing).
_STREAM_DIGEST_FROM = 256 * 1024


def _parse(data: bytes, defects: list[str]) -> Message | None:
    try:
        # Fed in slices: `parsebytes` decodes the whole message to one str first, and its line lists on top of
        # that made a 24 MB message peak at 191 MB of Python memory (69 MB fed this way).
        parser = BytesFeedParser(policy=policy.compat32)
        for start in range(0, len(data), _FEED_CHUNK):
            parser.feed(data[start : start + _FEED_CHUNK])
        return parser.close()
    except RecursionError:
        defects.append("limit:depth:recursion")
    except Exception as error:
        defects.append(f"parse_failed:{type(error).__name__}")
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(data)
    except Exception as error:
        defects.append(f"parse_failed:headers:{type(error).__name__}")
        return None


def _assemble(
    raw: bytes,
    message: Message | None,
    content: _Content,
    copy: MailboxCopy,
    source: MessageSource,
    limits: MimeLimits,
    defects: list[str],
) -> NormalizedMail:
    subject = ""
    participants: tuple[Participant, ...] = ()
    rfc_message_id = ""
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    date = None
    auto_submitted = list_mail = False
    if message is not None:
        try:
            subject = decoded_text(message, "subject", defects)
            participants = _participants(message, limits, defects)
            ids = message_ids(message, "message-id")
            rfc_message_id = ids[0] if ids else ""
            in_reply_to = _capped_ids(message_ids(message, "in-reply-to"), limits, defects)
            references = _capped_ids(message_ids(message, "references"), limits, defects)
            date = header_date(message, defects)
            senders = [p.email for p in participants if p.role is ParticipantRole.FROM]
            auto_submitted = is_auto_submitted(message, senders[0] if senders else "")
            list_mail = is_list_mail(message)
        except RecursionError:
            defects.append("limit:depth:recursion")
        except Exception as error:
            defects.append(f"parse_failed:headers:{type(error).__name__}")
    text_body, text_cut = _capped("\n".join(content.text_parts), limits.max_body_chars)
    html_body, html_cut = _capped("\n".join(content.html_parts), limits.max_body_chars)
    forwarded = (
        content.forwarded_part
        or bool(_FORWARD_SUBJECT.match(subject))
        or bool(_FORWARD_MARKER.search(text_body[:_MARKER_SCAN_CHARS]))
    )
    outbound = SENT_LABEL in copy.label_ids or source is not MessageSource.GMAIL_SYNC
    return NormalizedMail(
        copy=copy,
        source=source,
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        rfc_message_id=rfc_message_id,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        participants=participants,
        text_body=text_body,
        html_body=html_body,
        body_truncated=text_cut or html_cut or content.body_cut,
        attachments=tuple(content.attachments),
        header_date=date,
        auto_submitted=auto_submitted,
        list_mail=list_mail,
        forwarded=forwarded,
        size_bytes=len(raw),
        snippet=_snippet(text_body, html_body, limits.snippet_chars),
        defects=_capped_defects(defects, limits),
    )


def _participants(message: Message, limits: MimeLimits, defects: list[str]) -> tuple[Participant, ...]:
    participants: list[Participant] = []
    reader = AddressReader(limits)
    for role, name in _ROLE_FIELDS:
        seen: set[str] = set()
        for address in reader.read(message, name, defects):
            email_address, display_name = address.email, address.display_name
            if email_address in seen:
                continue
            if len(participants) >= limits.max_participants:
                defects.append("limit:participants")
                return tuple(participants)
            seen.add(email_address)
            participants.append(Participant(email_address, display_name, role, len(seen) - 1))
    return tuple(participants)


def _capped_ids(ids: list[str], limits: MimeLimits, defects: list[str]) -> tuple[str, ...]:
    """Keep the thread root (first) and the nearest ancestors (last) when a chain is too long."""
    if len(ids) <= limits.max_message_ids:
        return tuple(ids)
    defects.append("limit:message_ids")
    return (ids[0], *ids[len(ids) - limits.max_message_ids + 1 :])


def _capped(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


def _capped_defects(defects: list[str], limits: MimeLimits) -> tuple[str, ...]:
    unique = list(dict.fromkeys(defects))
    if len(unique) > limits.max_defects:
        unique = [*unique[: limits.max_defects - 1], "limit:defects"]
    return tuple(unique)


def _snippet(text_body: str, html_body: str, length: int) -> str:
    source = text_body[:_SNIPPET_SOURCE_CHARS]
    if not source.strip() and html_body:
        source = html.unescape(_HTML_TAG.sub(" ", _visible_html(html_body[:_SNIPPET_SOURCE_CHARS])))
    return _WHITESPACE.sub(" ", source).strip()[:length]


def _visible_html(markup: str) -> str:
    """`markup` without script, style and head elements (an unclosed one hides the rest)."""
    lowered = markup.lower()
    kept: list[str] = []
    position = 0
    while (opening := _HTML_INVISIBLE_START.search(markup, position)) is not None:
        kept.append(markup[position : opening.start()])
        closing = lowered.find(f"</{opening.group(1).lower()}", opening.end())
        if closing < 0:
            return " ".join(kept)
        position = lowered.find(">", closing)
        position = len(markup) if position < 0 else position + 1
    kept.append(markup[position:])
    return " ".join(kept)


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _walk(part: Message, path: str, depth: int, content: _Content, *, in_related: bool) -> None:
    content.parts_seen += 1
    if content.parts_seen > content.limits.max_parts:
        content.defects.append("limit:parts")
        return
    if depth > content.limits.max_depth:
        content.defects.append("limit:depth")
        return
    try:
        _read_part(part, path, depth, content, in_related=in_related)
    finally:
        # Decoding adds defects (bad base64, for example), so they are collected after the part was read.
        content.defects.extend(f"mime:{type(defect).__name__}" for defect in part.defects)


def _read_part(part: Message, path: str, depth: int, content: _Content, *, in_related: bool) -> None:
    content_type = _content_type(part)
    if _is_container(part):
        for index, child in enumerate(part.get_payload(), start=1):
            child_path = f"{path}.{index}" if path else str(index)
            _walk(child, child_path, depth + 1, content, in_related=content_type == "multipart/related")
        return
    leaf_path = path or "1"
    if content_type == "message/rfc822" or part.is_multipart():
        # Other message/* parts (delivery reports, partials) are described but are no forward.
        content.forwarded_part = content.forwarded_part or content_type in (
            "message/rfc822",
            "message/global",
        )
        content.attachments.append(_describe(part, leaf_path, content_type, in_related, content.defects))
        return
    disposition, filename = _disposition(part, content.defects)
    # A multipart without a usable boundary has no parts, only text (RFC 2046 5.1.1 gives it no structure):
    # it is read as a plain text body, never described as an attachment there would be no content for.
    is_text = content_type in ("text/plain", "text/html") or content_type.startswith("multipart/")
    if is_text and disposition != "attachment" and not filename:
        text, cut = decoded_text_payload(part, content.defects, max_chars=content.limits.max_body_chars)
        content.body_cut = content.body_cut or cut
        (content.html_parts if content_type == "text/html" else content.text_parts).append(text)
        return
    content.attachments.append(_describe(part, leaf_path, content_type, in_related, content.defects))


def _mime_field(part: Message, name: str) -> MimeField:
    values = raw_values(part, name)
    return parse_mime_field(values[0]) if values else MimeField(value="")


def _disposition(part: Message, defects: list[str]) -> tuple[str | None, str]:
    """The Content-Disposition value and the file name (its `filename`, else Content-Type's `name`), read with
    RFC 2231 continuations and charsets, and RFC 2047 words inside the quotes as Outlook writes them."""
    disposition = _mime_field(part, "content-disposition")
    filename = disposition.get("filename") or _mime_field(part, "content-type").get("name")
    defects.extend(disposition.defects)
    return disposition.value or None, decoded_value("content-disposition", filename, defects)


def _describe(
    part: Message, path: str, content_type: str, in_related: bool, defects: list[str]
) -> Attachment:
    disposition, filename = _disposition(part, defects)
    streamed = _streamed_base64_digest(part)
    if streamed is None:
        payload = part_content(part, defects)
        size, sha256 = len(payload), hashlib.sha256(payload).hexdigest()
    else:
        size, sha256 = streamed
    content_id = ""
    try:
        content_id = clean_header_text(str(part.get("content-id", ""))).strip("<>")
    except Exception:
        defects.append("header_unparseable:content-id")
    if not filename and content_type == "message/rfc822":
        filename = "forwarded-message.eml"
    inline = disposition == "inline" or (disposition is None and bool(content_id) and in_related)
    return Attachment(
        part_path=path,
        filename=filename,
        content_type=content_type,
        size_bytes=size,
        content_id=content_id,
        inline=inline,
        sha256=sha256,
    )


def _streamed_base64_digest(part: Message) -> tuple[int, str] | None:
    """Size and SHA-256 of a valid base64 leaf, decoded a slice at a time. What `part_content` gives would be the
    same bytes, but it holds the text, its bytes, their joined lines and the decoded content at once (a 24 MB
    attachment peaked at about 70 MB more). None when the part is not valid base64: then `part_content` decides
    (with the stdlib's lenient fallbacks and defects), so both paths always agree."""
    payload = getattr(part, "_payload", None)  # the undecoded body text compat32 keeps
    if part.is_multipart() or not isinstance(payload, str) or len(payload) < _STREAM_DIGEST_FROM:
        return None
    if str(part.get("content-transfer-encoding", "")).lower() != "base64":  # get_payload's own test
        return None
    digest = hashlib.sha256()
    size = 0
    carry = b""
    for start in range(0, len(payload), _FEED_CHUNK):
        try:
            piece = b"".join(payload[start : start + _FEED_CHUNK].encode("ascii").splitlines())
        except UnicodeEncodeError:
            return None
        data = carry + piece
        last = start + _FEED_CHUNK >= len(payload)
        usable = len(data) if last else len(data) - len(data) % 4
        try:
            decoded = binascii.a2b_base64(data[:usable], strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        carry = data[usable:]
        digest.update(decoded)
        size += len(decoded)
    return size, digest.hexdigest()


def part_content(part: Message, defects: list[str]) -> bytes:
    """The decoded bytes of a leaf part, or the serialized message of a message/rfc822 part."""
    try:
        if part.is_multipart():
            inner = part.get_payload(0)
            return inner.as_bytes(policy=_VERBATIM) if isinstance(inner, Message) else b""
        payload = part.get_payload(decode=True)
    except Exception as error:
        defects.append(f"payload_unreadable:{type(error).__name__}")
        return b""
    return payload if isinstance(payload, bytes) else b""


def decoded_text_payload(part: Message, defects: list[str], *, max_chars: int) -> tuple[str, bool]:
    """A text part's content as str (declared charset from the allow-list, else the fallback of mime_charsets;
    undecodable bytes become U+FFFD), cut to at most about `max_chars`, and whether it was cut."""
    # No charset needs more than 4 bytes per character for the characters we keep.
    keep = 4 * max_chars + 4
    payload = _unencoded_prefix(part, keep + 1)
    if payload is None:
        payload = part_content(part, defects)
    cut = len(payload) > keep
    if cut:
        payload = payload[: 4 * max_chars + 4]
    content_type = _mime_field(part, "content-type")
    defects.extend(content_type.defects)
    decoded = decode_bytes(payload, content_type.get("charset") or None)
    if decoded.unknown_label:
        defects.append(f"charset_unknown:{decoded.unknown_label}")
    return clean_text(decoded.text), cut


def _unencoded_prefix(part: Message, length: int) -> bytes | None:
    """The first `length` bytes of a body sent without transfer encoding (7bit, 8bit, binary), without decoding
    all of it first (a 50 MB text body is cut to 1 MB anyway); None when the body must be decoded."""
    payload = getattr(part, "_payload", None)  # the body text compat32 keeps
    if part.is_multipart() or not isinstance(payload, str) or len(payload) <= length:
        return None
    if str(part.get("content-transfer-encoding", "")).lower() in ("base64", "quoted-printable"):
        return None
    return payload[:length].encode("ascii", "surrogateescape")


def attachment_content(raw: bytes, part_path: str, limits: MimeLimits = DEFAULT_LIMITS) -> bytes | None:
    """The decoded bytes of the attachment at `part_path` (as `Attachment.part_path`), None if there is none.

    Walks the tree exactly as the normalizer does, so every attachment it described has content here."""
    defects: list[str] = []
    message = _parse(bound_raw_message(raw, limits).data, defects)
    if message is None:
        return None
    part: Message = message
    try:
        steps = [int(step) for step in part_path.split(".")]
    except ValueError:
        return None
    if not _is_container(message):
        return part_content(message, defects) if steps == [1] else None
    for step in steps:
        if not _is_container(part):
            return None
        children = part.get_payload()
        if not isinstance(children, list) or not 1 <= step <= len(children):
            return None
        child = children[step - 1]
        if not isinstance(child, Message):
            return None
        part = child
    return None if _is_container(part) else part_content(part, defects)


def _is_container(part: Message) -> bool:
    """A multipart with parts: the normalizer walks into it and describes its leaves, never the part itself."""
    return part.is_multipart() and _content_type(part).startswith("multipart/")
