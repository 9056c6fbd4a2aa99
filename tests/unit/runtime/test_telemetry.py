"""Telemetry configuration from the standard OTEL_* variables: none by default, console or OTLP on request,
anything else refused naming the variable."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from services.runtime.settings import ConfigurationError
from services.runtime.telemetry import configure_telemetry


def exporters_of(telemetry: object) -> list[object]:
    processors = telemetry.tracer_provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    return [processor.span_exporter for processor in processors]


def test_nothing_is_exported_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    telemetry = configure_telemetry("threading")
    assert exporters_of(telemetry) == []
    assert telemetry.tracer_provider.resource.attributes["service.name"] == "mailsync-threading"


def test_console_exporter_and_service_name_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "threading-canary")
    telemetry = configure_telemetry("threading")
    assert [type(e) for e in exporters_of(telemetry)] == [ConsoleSpanExporter]
    assert telemetry.tracer_provider.resource.attributes["service.name"] == "threading-canary"


def test_otlp_exporter_is_built_from_the_otlp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    (exporter,) = exporters_of(configure_telemetry("auth"))
    assert type(exporter).__name__ == "OTLPSpanExporter"


def test_an_unknown_exporter_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "fax")
    with pytest.raises(ConfigurationError, match=r"^OTEL_METRICS_EXPORTER: 'fax'"):
        configure_telemetry("auth")


def test_otlp_over_http_when_the_protocol_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    (exporter,) = exporters_of(configure_telemetry("auth"))
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")


def test_the_per_signal_protocol_wins_over_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    (exporter,) = exporters_of(configure_telemetry("auth"))
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")


def test_an_unknown_protocol_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"):
        configure_telemetry("auth")


def test_console_spans_go_to_stderr_one_json_object_a_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    (exporter,) = exporters_of(configure_telemetry("auth"))
    span = TracerProvider().get_tracer("t").start_span("a span")
    span.end()
    exporter.export([span])  # type: ignore[attr-defined]
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert json.loads(line)["name"] == "a span"
