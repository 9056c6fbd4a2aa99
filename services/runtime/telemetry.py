"""OpenTelemetry tracer and meter providers from the standard OTEL_* variables, and the gRPC interceptors.

OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER choose `otlp`, `console` or `none` (none is the local default);
OTEL_EXPORTER_OTLP_PROTOCOL (and its _TRACES_ / _METRICS_ forms) chooses `grpc` (the default) or `http/protobuf`;
the OTLP exporters read OTEL_EXPORTER_OTLP_ENDPOINT, headers, timeouts and certificates themselves, the SDK reads
OTEL_TRACES_SAMPLER, OTEL_BSP_* and OTEL_METRIC_EXPORT_INTERVAL, and OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
override the resource. The console exporters write one JSON object a line to stderr, so they never mix with the
JSON log lines on stdout. gRPC instrumentation is passed explicitly to the server and channel factories (never
monkeypatched), with the health service left out of traces.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from services.runtime.instruments import SECONDS_BUCKETS
from services.runtime.settings import ConfigurationError

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass
class Telemetry:
    """The configured providers; `shutdown()` flushes what is buffered."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    async def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _exporter_choice(variable: str) -> str:
    raw = os.environ.get(variable, "none").strip().lower() or "none"
    if raw not in EXPORTERS:
        raise ConfigurationError(f"{variable}: {raw!r} is not one of {', '.join(EXPORTERS)}")
    return raw


def otlp_protocol(signal: str) -> str:
    """The OTLP protocol for `signal` (TRACES or METRICS): its own variable, else the general one, else grpc."""
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
        raw = os.environ.get(variable, "").strip().lower() or "grpc"
    if raw not in PROTOCOLS:
        raise ConfigurationError(f"{variable}: {raw!r} is not one of {', '.join(PROTOCOLS)}")
    return raw


def _one_line(text: str) -> str:
    # The SDK's console exporters print indented JSON; a line each keeps them greppable and parseable.
    return json.dumps(json.loads(text), separators=(",", ":")) + os.linesep


def _span_exporter(choice: str) -> SpanExporter | None:
    if choice == "otlp":
        if otlp_protocol("TRACES") == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            return HttpSpanExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if choice == "console":
        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: _one_line(span.to_json()))
    return None


def _metric_exporter(choice: str) -> MetricExporter | None:
    if choice == "otlp":
        if otlp_protocol("METRICS") == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )

            return HttpMetricExporter()
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    if choice == "console":
        return ConsoleMetricExporter(out=sys.stderr, formatter=lambda data: _one_line(data.to_json()))
    return None


def _metric_readers(choice: str) -> list[MetricReader]:
    exporter = _metric_exporter(choice)
    return [] if exporter is None else [PeriodicExportingMetricReader(exporter)]


def _views() -> list[View]:
    # The SDK's default buckets suit milliseconds; every duration here is in seconds.
    return [
        View(
            instrument_type=Histogram,
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(boundaries=SECONDS_BUCKETS),
        )
    ]


def configure_telemetry(service_name: str) -> Telemetry:
    """Builds the providers and makes them global (the first call in a process wins, as OTel requires)."""
    resource = Resource.create()
    # Our name only fills in when OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES did not give one.
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": f"mailsync-{service_name}"}))
    tracer_provider = TracerProvider(resource=resource)
    span_exporter = _span_exporter(_exporter_choice("OTEL_TRACES_EXPORTER"))
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=_metric_readers(_exporter_choice("OTEL_METRICS_EXPORTER")),
        views=_views(),
    )
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(tracer_provider)
    if type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
        metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)


def _not_health() -> Callable[[Any], bool]:
    return filters.negate(filters.service_name(HEALTH_SERVICE))


def server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> Any:
    """The OpenTelemetry aio server interceptor (health checks are not traced)."""
    return aio_server_interceptor(tracer_provider=tracer_provider, filter_=_not_health())


def client_interceptors(tracer_provider: trace.TracerProvider | None = None) -> list[Any]:
    """The OpenTelemetry aio client interceptors (health checks are not traced)."""
    return list(aio_client_interceptors(tracer_provider=tracer_provider, filter_=_not_health()))
