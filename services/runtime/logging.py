"""JSON logs on stdout, one object a line, carrying the current trace and span ids, with secrets redacted.

Fields: timestamp (RFC 3339, UTC), severity, name, message, trace_id and span_id when a span is active,
exception when there is one, and any `extra={...}` the caller passed.

Secrets never reach a log line, whoever logs them (our code or a library): `SecretRedactingFilter` rewrites
every record before it is formatted, and the formatter applies the same patterns once more to the finished
line. It knows the shapes of what the product handles: JWTs (service, CRM and Google push tokens), bearer
headers, Google OAuth access and refresh tokens and authorization codes, OAuth parameters in URLs and JSON, and
the secret token of a BCC-drop address (`bcc+<token>@...`, which aiosmtpd logs with every RCPT TO). Bodies
have no shape, so no logger may print them: the DEBUG output of aiosmtpd (every DATA line) and aiosqlite (every
statement's parameters) is capped at INFO.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any, TextIO

from opentelemetry import trace

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
REDACTED = "[redacted]"
# (pattern, replacement): each value pattern stops at quotes, backslashes and separators, so redacting a
# finished JSON line keeps it valid JSON.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT: header.payload.signature, base64url (service tokens, CRM tokens, Google's OIDC tokens).
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    # Google OAuth: access tokens (ya29.), refresh tokens (1//) and authorization codes (4/).
    (re.compile(r"\bya29\.[A-Za-z0-9._-]+"), REDACTED),
    (re.compile(r"(?<![\w/])1//[A-Za-z0-9._-]+"), REDACTED),
    (re.compile(r"(?<![\w/])4/[A-Za-z0-9._-]{10,}"), REDACTED),
    # OAuth parameters in a URL or form body (the callback's ?code=...&state=... reaches access logs).
    (
        re.compile(
            r"(?i)([?&;](?:code|state|access_token|refresh_token|id_token|token|client_secret|assertion)=)"
            r"[^&\s\"'\\]+"
        ),
        rf"\1{REDACTED}",
    ),
    # The same parameters as JSON or Python-repr keys.
    (
        re.compile(
            r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|authorization)[\"']?\s*[:=]\s*"
            r"(?:\\?[\"'])?)[^\"'\\\s,}]+"
        ),
        rf"\1{REDACTED}",
    ),
    # A BCC-drop address's token: the subaddress after '+' (160 bits of lower-case base32).
    (re.compile(r"(?i)\+[a-z2-7]{20,}(?=@)"), f"+{REDACTED}"),
)
# Libraries whose DEBUG output carries message content or secrets: never below INFO, whatever the configured
# level (aiosmtpd logs every DATA line; aiosqlite every statement with its parameters: bodies, tokens).
_CONTENT_LOGGERS = ("mail.log", "aiosqlite")


# Text one of _SECRET_PATTERNS can match holds one of these (compared in lower case); text that holds none is left
# as it is without running the patterns, which cost a third of threading's logging under a burst. A pattern added
# above needs its literal here (tests/unit/runtime/test_logging.py checks that skipping never changes a result).
_SECRET_MARKERS = (
    "eyj",
    "bearer",
    "ya29.",
    "1//",
    "4/",
    "code=",
    "state=",
    "token",
    "client_secret",
    "assertion=",
    "authorization",
)


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    if any(marker in lowered for marker in _SECRET_MARKERS):
        return True
    # A BCC-drop token is a subaddress: '+' and '@' (every log line's timestamp has a '+', none an '@').
    return "+" in text and "@" in text


def redact_secrets(text: str) -> str:
    """`text` with every secret-shaped part replaced by [redacted]."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redacted_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, bytes | bytearray):
        return redact_secrets(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {key: _redacted_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redacted_value(item) for item in value)
    return value


class SecretRedactingFilter(logging.Filter):
    """Rewrites a record's message, extras and exception text with secrets redacted (never drops a record)."""

    _exception_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = redact_secrets(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                setattr(record, key, _redacted_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "name": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Once more on the finished line: a secret inside an object's repr (`default=str`) is caught here.
        return redact_secrets(json.dumps(entry, default=str))


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Routes every logger to one JSON handler (replacing earlier handlers, so calling it twice is harmless)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretRedactingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic announces each of its plugins at INFO on every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(root.level, logging.WARNING))
    for name in _CONTENT_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
