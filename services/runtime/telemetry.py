"""OpenTelemetry tracer and meter providers from the standard OTEL_* variables, and the gRPC interceptors.

OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER choose `otlp`, `console` or `none` (none is the local default);
the OTLP exporter reads OTEL_EXPORTER_OTLP_ENDPOINT and friends itself, and OTEL_SERVICE_NAME /
OTEL_RESOURCE_ATTRIBUTES override the resource. gRPC instrumentation is passed explicitly to the server and
channel factories (never monkeypatched), with the health service left out of traces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from services.runtime.settings import ConfigurationError

EXPORTERS = ("otlp", "console", "none")
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


def _span_exporter(choice: str) -> SpanExporter | None:
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if choice == "console":
        return ConsoleSpanExporter()
    return None


def _metric_readers(choice: str) -> list[MetricReader]:
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return [PeriodicExportingMetricReader(OTLPMetricExporter())]
    if choice == "console":
        return [PeriodicExportingMetricReader(ConsoleMetricExporter())]
    return []


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
        resource=resource, metric_readers=_metric_readers(_exporter_choice("OTEL_METRICS_EXPORTER"))
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
