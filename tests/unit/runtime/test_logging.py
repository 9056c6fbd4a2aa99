"""JSON logs: one object a line with timestamp, severity, name, message, extras, and the active trace ids."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logging import _SECRET_PATTERNS, REDACTED, configure_logging, redact_secrets


def log_line(emit: object) -> dict[str, object]:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    try:
        emit()  # type: ignore[operator]
    finally:
        logging.getLogger().handlers.clear()
    (line,) = stream.getvalue().splitlines()
    return json.loads(line)


def test_a_record_becomes_one_json_object_with_the_standard_fields() -> None:
    entry = log_line(
        lambda: logging.getLogger("services.test").warning(
            "mailbox %s stalled", "m1", extra={"mailbox_id": "m1"}
        )
    )
    assert entry["severity"] == "WARNING"
    assert entry["name"] == "services.test"
    assert entry["message"] == "mailbox m1 stalled"
    assert entry["mailbox_id"] == "m1"
    assert str(entry["timestamp"]).endswith("+00:00")
    assert "trace_id" not in entry


def test_a_record_inside_a_span_carries_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")

    def emit() -> None:
        with tracer.start_as_current_span("work") as span:
            context = span.get_span_context()
            logging.getLogger("services.test").info("inside")
            emit.ids = (format(context.trace_id, "032x"), format(context.span_id, "016x"))  # type: ignore[attr-defined]

    entry = log_line(emit)
    assert (entry["trace_id"], entry["span_id"]) == emit.ids  # type: ignore[attr-defined]


def test_exceptions_are_logged_in_the_same_object() -> None:
    def emit() -> None:
        try:
            raise ValueError("broken")
        except ValueError:
            logging.getLogger("services.test").exception("failed")

    entry = log_line(emit)
    assert "ValueError: broken" in str(entry["exception"])


SECRETS = {
    "bcc drop token": "bcc+abcdefghijklmnopqrstuvwxyz234567@drop.mailsync.test",
    "access token": "ya29.sandbox-Xy_z0123456789abcdef",
    "refresh token": "1//sandbox-refresh-0123456789abcdef",
    "authorization code": "4/sandbox-code-0123456789abcdef",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjcm0ifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
}


@pytest.mark.parametrize(
    "emit",
    [
        lambda: logging.getLogger("mail.log").info("('127.0.0.1', 5) recip: %s", SECRETS["bcc drop token"]),
        lambda: logging.getLogger("aiohttp.access").info(
            'GET /oauth/callback?state=s3cr3tstate&code=%s HTTP/1.1" 200', SECRETS["authorization code"]
        ),
        lambda: logging.getLogger("x").info(
            "token response",
            extra={
                "body": {"access_token": SECRETS["access token"], "refresh_token": SECRETS["refresh token"]}
            },
        ),
        lambda: logging.getLogger("x").warning("call failed: authorization: Bearer %s", SECRETS["jwt"]),
        lambda: logging.getLogger("x").error(
            "failed", exc_info=ValueError(f"refresh with {SECRETS['refresh token']}")
        ),
    ],
)
def test_secrets_are_redacted_wherever_they_appear(emit: object) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        emit()  # type: ignore[operator]
    finally:
        logging.getLogger().handlers.clear()
    line = stream.getvalue()
    json.loads(line)  # redaction keeps the line valid JSON
    assert "[redacted]" in line
    for name, secret in SECRETS.items():
        assert secret not in line, name
    assert "s3cr3tstate" not in line


def test_redaction_leaves_ordinary_text_alone() -> None:
    entry = log_line(
        lambda: logging.getLogger("x").info(
            "connection state changed", extra={"state": "CONNECTED", "mailbox": "bob+sales@example.com"}
        )
    )
    assert entry["state"] == "CONNECTED" and entry["mailbox"] == "bob+sales@example.com"


def test_aiosmtpd_debug_output_which_carries_message_lines_stays_off_at_debug() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        logging.getLogger("mail.log").debug("DATA readline: %s", "the secret body line")
        logging.getLogger("services.x").debug("our own debug line")
    finally:
        logging.getLogger().handlers.clear()
    assert "secret body" not in stream.getvalue() and "our own debug line" in stream.getvalue()


def _every_pattern_applied(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# Fragments that match each secret pattern, or nearly do, and ordinary log text around them.
_FRAGMENTS = [
    *SECRETS.values(),
    "Bearer abc.def",
    "BEARER xyz",
    "?code=4/abcdefghijklmn",
    "&state=opaque",
    ";token=t0k3n",
    "&client_secret=s",
    "?assertion=a.b.c",
    '"access_token": "ya29.a"',
    "'refresh_token'='1//x'",
    "ID_TOKEN: eyJa.eyJb.c",
    "Authorization=abc",
    "client_secret:xyz",
    "x+abcdefghijklmnopqrstuvwxyz@d.test",
    "2026-12-04T10:00:00.000+00:00",
    "message placed",
    '{"rule": "R2", "location_id": "loc-a"}',
    "eyJ",
    "1/",
    "4",
    "+",
    "@",
    "=",
    " ",
]


@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=12).map("".join))
def test_skipping_text_with_no_secret_marker_never_changes_what_redaction_returns(text: str) -> None:
    # redact_secrets leaves text alone when no pattern's literal is in it; running every pattern must agree.
    assert redact_secrets(text) == _every_pattern_applied(text)


@pytest.mark.parametrize("fragment", [f for f in _FRAGMENTS if _every_pattern_applied(f) != f])
def test_every_secret_shaped_fragment_is_redacted(fragment: str) -> None:
    assert redact_secrets(fragment) != fragment and REDACTED in redact_secrets(fragment)
