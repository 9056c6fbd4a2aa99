"""Validation at the API edge, the same for every service and every database: each request field is checked
against its declared kind (services.runtime.api_limits) before a servicer sees it.

A kind is a small rule with one human description (`1-64 characters from A-Z a-z 0-9 . _ : @ + = ~ -`) that the
error message, the protos' comments and docs/api.md all quote. Checks never echo the value: a violation names
the field path (`contact.emails[0].email`) and what is allowed. Enum fields refuse numbers the proto does not
define and Timestamp fields refuse instants outside years 1-9999, whatever the table says; every other string,
bytes and integer field is looked up in the table (fields it lacks get a conservative default, and a unit test
fails until the field is declared).

`ValidationInterceptor` applies all this to every request of every mailsync RPC, including each message of a
client stream, and turns a request that does not even decode (invalid UTF-8 in a string, a truncated field)
into INVALID_ARGUMENT naming the field when it can be found.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import idna
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.runtime.errors import InvalidArgument
from services.runtime.grpc_handlers import wrap_handler

API_PACKAGE = "mailsync."
# Characters no stored string may hold: PostgreSQL text cannot store U+0000 at all, SQLite can, so refusing it
# here is what keeps the two databases answering alike.
_NUL = "\x00"
# Cc: C0, DEL, C1 (NEL included); Zl/Zp: U+2028/U+2029, which some readers treat as line breaks.
_LINE_BREAKING_OR_CONTROL = frozenset({"Cc", "Zl", "Zp"})


class FieldKind(ABC):
    """One kind of value: a name, the limit in words, and the check. Subclasses implement `problem`."""

    name: str
    summary: str

    @abstractmethod
    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (without quoting it), or None."""


def _control_problem(text: str, *, single_line: bool) -> str | None:
    if _NUL in text:
        return "must not contain NUL (U+0000) characters"
    if single_line and any(unicodedata.category(c) in _LINE_BREAKING_OR_CONTROL for c in text):
        return "must be one line without control characters"
    return None


@dataclass(frozen=True)
class Identifier(FieldKind):
    """An id: bounded length from a fixed character set (what every table's key column can store)."""

    name: str
    max_chars: int
    charset: str = r"A-Za-z0-9._:@+=~-"
    charset_words: str = "A-Z a-z 0-9 and . _ : @ + = ~ -"

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"up to {self.max_chars} characters from {self.charset_words}"

    def problem(self, value: Any) -> str | None:
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters (got {len(value)})"
        if not re.fullmatch(f"[{self.charset}]*", value):
            return f"must use only the characters {self.charset_words}"
        return None


@dataclass(frozen=True)
class Text(FieldKind):
    """Free text of bounded length; `single_line` also refuses line breaks and control characters."""

    name: str
    max_chars: int | None
    single_line: bool = True

    @property
    def summary(self) -> str:  # type: ignore[override]
        size = (
            f"at most {self.max_chars} characters"
            if self.max_chars
            else "any length within the message limit"
        )
        shape = ", one line, no control characters" if self.single_line else ", no NUL characters"
        return size + shape

    def problem(self, value: Any) -> str | None:
        if self.max_chars is not None and len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters (got {len(value)})"
        return _control_problem(value, single_line=self.single_line)


@dataclass(frozen=True)
class Pattern(FieldKind):
    """Text matching a regular expression, described in words for the client."""

    name: str
    max_chars: int
    regex: str
    words: str

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"{self.words}, at most {self.max_chars} characters"

    def problem(self, value: Any) -> str | None:
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters (got {len(value)})"
        if value and not re.fullmatch(self.regex, value):
            return f"must be {self.words}"
        return None


# RFC 5322 section 3.2.3 atext, and RFC 6532's UTF-8 letters beyond ASCII.
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ASCII_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PRINTABLE_NON_ASCII = frozenset({"L", "M", "N", "P", "S"})


def _local_part_problem(local: str) -> str | None:
    if not local:
        return "has no local part before '@'"
    if len(local.encode()) > 64:
        return "has a local part longer than 64 bytes"
    if local.startswith('"'):
        return None if _QUOTED_STRING.fullmatch(local) else "has a malformed quoted local part"
    ascii_form = "".join(
        "a" if ord(c) > 127 and unicodedata.category(c)[0] in _PRINTABLE_NON_ASCII else c for c in local
    )
    if not _ASCII_DOT_ATOM.fullmatch(ascii_form):
        return "has a local part that is not a dot-atom (RFC 5322 section 3.4.1)"
    return None


def ascii_domain(domain: str) -> str | None:
    """The domain in its ASCII (IDNA 2008, UTS 46) form, or None when it is not a valid host name."""
    if not domain or domain.startswith("[") or domain.endswith("."):
        return None
    try:
        encoded = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    labels = encoded.split(".")
    if len(encoded) > 253 or len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(_LDH_LABEL.fullmatch(label) for label in labels):
        return None
    return encoded


@dataclass(frozen=True)
class EmailAddress(FieldKind):
    """An RFC 5322 addr-spec (local-part@domain); the domain may be internationalized (IDNA)."""

    name: str = "email"
    max_chars: int = 254

    @property
    def summary(self) -> str:  # type: ignore[override]
        return (
            f"an RFC 5322 addr-spec local-part@domain, at most {self.max_chars} characters; "
            "the domain a host name with a dot, internationalized names allowed (IDNA)"
        )

    def problem(self, value: Any) -> str | None:
        if not value:
            return None
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters (got {len(value)})"
        control = _control_problem(value, single_line=True)
        if control:
            return "is not an email address: it " + control
        local, at, domain = value.rpartition("@")
        if not at:
            return "is not an email address: it has no '@' (expected local-part@domain)"
        local_problem = _local_part_problem(local)
        if local_problem:
            return f"is not an email address: it {local_problem}"
        if ascii_domain(domain) is None:
            return "is not an email address: its domain is not a host name like example.com"
        return None


@dataclass(frozen=True)
class Cursor(FieldKind):
    """A position in a feed: the decimal number an earlier response gave (empty: from now on)."""

    name: str = "cursor"
    max_value: int = 2**63 - 1

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"empty, or a decimal number from 0 to {self.max_value} that a response gave"

    def problem(self, value: Any) -> str | None:
        if not value:
            return None
        if len(value) > 19 or not value.isascii() or not value.isdigit() or int(value) > self.max_value:
            return "is not a cursor this service issued: pass a response's cursor unchanged"
        return None


@dataclass(frozen=True)
class Url(FieldKind):
    """An absolute http(s) URL of bounded length."""

    name: str = "url"
    max_chars: int = 2048

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"an absolute http:// or https:// URL, at most {self.max_chars} characters"

    def problem(self, value: Any) -> str | None:
        if not value:
            return None
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters (got {len(value)})"
        if not re.fullmatch(r"https?://[\x21-\x7e]+", value, flags=re.IGNORECASE):
            return "must be an absolute http:// or https:// URL without spaces"
        return None


@dataclass(frozen=True)
class Integer(FieldKind):
    """A whole number within a range."""

    name: str
    minimum: int
    maximum: int

    @property
    def summary(self) -> str:  # type: ignore[override]
        return f"a whole number from {self.minimum} to {self.maximum}"

    def problem(self, value: Any) -> str | None:
        if not self.minimum <= value <= self.maximum:
            return f"must be from {self.minimum} to {self.maximum}"
        return None


@dataclass(frozen=True)
class Binary(FieldKind):
    """Bytes of bounded size (None: the gRPC message limit bounds them)."""

    name: str
    max_bytes: int | None

    @property
    def summary(self) -> str:  # type: ignore[override]
        if self.max_bytes is None:
            return "bytes, bounded by the service's gRPC message limit"
        return f"at most {self.max_bytes} bytes"

    def problem(self, value: Any) -> str | None:
        if self.max_bytes is not None and len(value) > self.max_bytes:
            return f"must be at most {self.max_bytes} bytes (got {len(value)})"
        return None


@dataclass(frozen=True)
class FieldRule:
    """What one request field may hold: its kind and, for repeated and map fields, how many entries.

    A repeated message field has no kind of its own (None): its items' fields carry their own rules.
    """

    kind: FieldKind | None
    max_items: int | None = None
    # Map fields: the kind of the keys (`kind` is then the kind of the values).
    key_kind: FieldKind | None = None

    def describe(self) -> str:
        if self.kind is None:
            return f"at most {self.max_items} items"
        if self.key_kind is not None:
            return (
                f"at most {self.max_items} entries; keys {self.key_kind.summary}; values {self.kind.summary}"
            )
        if self.max_items is not None:
            return f"at most {self.max_items} items, each {self.kind.summary}"
        return self.kind.summary


# Timestamps Python and both databases can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_SECONDS = -62135596800
MAX_TIMESTAMP_SECONDS = 253402300799
TIMESTAMP_SUMMARY = "an instant from year 1 to year 9999 (nanos 0-999999999)"
ENUM_SUMMARY = "one of the values the proto defines"
# Fields missing from the table still get a conservative limit (and a unit test asks for a declaration).
DEFAULT_TEXT = Text("text", 1024, single_line=False)
DEFAULT_INTEGER = Integer("integer", -(2**63), 2**63 - 1)
DEFAULT_BINARY = Binary("bytes", None)


@dataclass(frozen=True)
class Violation:
    """One field that breaks its rule."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


def rule_for(rules: Mapping[str, FieldRule], field: FieldDescriptor) -> FieldRule | None:
    """The declared rule of a field (None for enums, bools, Timestamps and messages, which need none)."""
    declared = rules.get(field.full_name)
    if declared is not None:
        return declared
    if field.type == FieldDescriptor.TYPE_STRING:
        return FieldRule(DEFAULT_TEXT, max_items=1000 if field.is_repeated else None)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return FieldRule(DEFAULT_BINARY)
    if field.cpp_type in (
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    ):
        return FieldRule(DEFAULT_INTEGER)
    return None


def validate_message(message: Message, rules: Mapping[str, FieldRule], prefix: str = "") -> list[Violation]:
    """Every violation in `message` (set fields only: an unset field is its default, which is always allowed)."""
    found: list[Violation] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            found += _check_map(field, value, rules, path)
            continue
        if field.is_repeated:
            rule = rule_for(rules, field)
            if rule is not None and rule.max_items is not None and len(value) > rule.max_items:
                found.append(Violation(path, f"must have at most {rule.max_items} items (got {len(value)})"))
                continue
            for index, item in enumerate(value):
                found += _check_value(field, item, rules, f"{path}[{index}]")
            continue
        found += _check_value(field, value, rules, path)
    return found


def _check_value(
    field: FieldDescriptor, value: Any, rules: Mapping[str, FieldRule], path: str
) -> list[Violation]:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return _check_timestamp(value, path)
        return validate_message(value, rules, f"{path}.")
    if field.enum_type is not None:
        if field.enum_type.values_by_number.get(value) is None:
            names = ", ".join(v.name for v in field.enum_type.values)
            return [Violation(path, f"is not a defined value: use one of {names}")]
        return []
    rule = rule_for(rules, field)
    if rule is None or rule.kind is None:
        return []
    problem = rule.kind.problem(value)
    return [Violation(path, problem)] if problem else []


def _check_map(
    field: FieldDescriptor, entries: Any, rules: Mapping[str, FieldRule], path: str
) -> list[Violation]:
    rule = rules.get(field.full_name)
    if rule is None or rule.kind is None:
        return []
    if rule.max_items is not None and len(entries) > rule.max_items:
        return [Violation(path, f"must have at most {rule.max_items} entries (got {len(entries)})")]
    found: list[Violation] = []
    for key, value in entries.items():
        key_problem = rule.key_kind.problem(key) if rule.key_kind is not None else None
        if key_problem:
            found.append(Violation(f"{path} key", key_problem))
            continue
        value_problem = rule.kind.problem(value)
        if value_problem:
            # The key passed its own check, so naming it stays bounded and safe.
            found.append(Violation(f"{path}[{key}]", value_problem))
    return found


def _check_timestamp(value: Any, path: str) -> list[Violation]:
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= value.nanos < 10**9:
        return [Violation(path, f"must be {TIMESTAMP_SUMMARY}")]
    return []


def invalid_argument(violations: Sequence[Violation]) -> InvalidArgument:
    """The one error for a request with violations: the first named in the message, all in the details."""
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"{first}{more}", violations=[(v.field, v.problem) for v in violations], field=first.field
    )


def required(value: str, field: str, hint: str = "") -> str:
    """The field's value, or INVALID_ARGUMENT naming the field and how to fill it."""
    if not value.strip():
        raise InvalidArgument(f"{field} is required" + (f": {hint}" if hint else ""), field=field)
    return value.strip()


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """A page size within [1, maximum]: 0 means the default, larger ones are capped (AIP-158)."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative: use 0 for the default", field="page_size")
    return min(requested or default, maximum)


# Page tokens: base64url of a JSON list of short strings, each part checked again when it comes back.
_PAGE_TOKEN_PART = re.compile(r"[\x21-\x7e]{0,256}")


def encode_page_token(parts: Sequence[str]) -> str:
    """An opaque token for the next page (the keyset position after the last item)."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, *, parts: int) -> tuple[str, ...] | None:
    """The parts of a token this service issued (None for no token); INVALID_ARGUMENT for anything else."""
    if not token:
        return None
    refused = InvalidArgument(
        "page_token is not one this service issued: pass next_page_token unchanged", field="page_token"
    )
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise refused from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != parts
        or not all(isinstance(p, str) and _PAGE_TOKEN_PART.fullmatch(p) for p in decoded)
    ):
        raise refused
    return tuple(decoded)


# ---- requests that do not decode ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes did not parse, so the RPC can answer INVALID_ARGUMENT for it."""

    type_name: str
    field: str

    def error(self) -> InvalidArgument:
        if self.field:
            return InvalidArgument(
                f"{self.field}: is not valid UTF-8 (the request is not a valid {self.type_name})",
                field=self.field,
            )
        return InvalidArgument(
            f"the request is not a valid encoded {self.type_name}: send it with a protobuf encoder",
            field="request",
        )


def tolerant_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns UndecodableRequest instead of raising (gRPC would answer UNKNOWN)."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor: Descriptor | None = getattr(message_class, "DESCRIPTOR", None)
    if descriptor is None:
        return deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            assert descriptor is not None
            return UndecodableRequest(descriptor.full_name, _bad_utf8_field(descriptor, raw) or "")

    return deserialize


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "", depth: int = 0) -> str | None:
    """The path of the first string field holding invalid UTF-8 (walks the wire format), or None."""
    if depth > 16:
        return None
    position = 0
    indices: dict[str, int] = {}
    try:
        while position < len(data):
            tag, position = _read_varint(data, position)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _, position = _read_varint(data, position)
                continue
            if wire_type in (1, 5):
                position += 8 if wire_type == 1 else 4
                continue
            if wire_type != 2:
                return None
            length, position = _read_varint(data, position)
            chunk = data[position : position + length]
            position += length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            path = prefix + field.name
            if field.is_repeated:
                index = indices.get(field.name, 0)
                indices[field.name] = index + 1
                path = f"{path}[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return path
            elif field.message_type is not None:
                found = _bad_utf8_field(field.message_type, chunk, f"{path}.", depth + 1)
                if found:
                    return found
    except ValueError:
        return None
    return None


# ---- the interceptor ----------------------------------------------------------------------------------------


def _checked(request: Any, rules: Mapping[str, FieldRule]) -> None:
    if isinstance(request, UndecodableRequest):
        raise request.error()
    if isinstance(request, Message) and request.DESCRIPTOR.full_name.startswith(API_PACKAGE):
        violations = validate_message(request, rules)
        if violations:
            raise invalid_argument(violations)


class ValidationInterceptor(grpc.aio.ServerInterceptor):
    """Checks every request (each message of a client stream too) against the rules before the servicer runs.

    Innermost of the interceptors: authentication and tenant scoping answer first, and the InvalidArgument it
    raises leaves through the error boundary like any domain error.
    """

    def __init__(self, rules: Mapping[str, FieldRule]) -> None:
        self._rules = rules

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(f"/{API_PACKAGE}"):
            return handler
        rules = self._rules

        @asynccontextmanager
        async def validated(request: Any, _context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            if request is not None:
                _checked(request, rules)
            yield

        async def each_validated(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                _checked(request, rules)
                yield request

        return wrap_handler(
            handler,
            validated,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
            request_stream=each_validated,
        )


def described_rules(
    rules: Mapping[str, FieldRule], fields: Iterable[FieldDescriptor]
) -> list[tuple[str, str]]:
    """(field name, limit in words) for each field, as docs/api.md and the protos' comments show them."""
    described = []
    for field in fields:
        if field.enum_type is not None:
            described.append((field.name, ENUM_SUMMARY))
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                described.append((field.name, TIMESTAMP_SUMMARY))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            continue
        else:
            rule = rule_for(rules, field)
            if rule is not None:
                described.append((field.name, rule.describe()))
    return described
