"""JSON logs: one object a line with timestamp, severity, name, message, extras, and the active trace ids."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from services.runtime.logging import configure_logging


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
