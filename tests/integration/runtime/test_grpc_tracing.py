"""The OpenTelemetry server interceptor traces business RPCs (with the caller's trace context) and leaves
health checks out."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mailsync.v1 import threading_pb2, threading_pb2_grpc
from services.runtime.grpc_auth import TokenVerifier
from services.runtime.grpc_client import StaticToken, open_channel
from services.runtime.grpc_server import start_grpc_server
from services.runtime.health import HealthMonitor
from services.threading.settings import ThreadingSettings
from tests.fixtures.services import crm_public_keys_value, session_crm_signer
from tests.integration.runtime.test_grpc_security import threading_registration


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_rpcs_are_traced_in_the_callers_trace_and_health_checks_are_not(
    spans: tuple[TracerProvider, InMemorySpanExporter], token_keys_value: str
) -> None:
    provider, exporter = spans
    settings = ThreadingSettings.load(
        grpc_port=0, service_token_keys=token_keys_value, crm_token_public_keys=crm_public_keys_value()
    )
    keys = TokenVerifier.parse(token_keys_value, crm_public_keys_value())
    server = await start_grpc_server(
        settings, [threading_registration()], HealthMonitor({}), keys, tracer_provider=provider
    )
    try:
        caller_tracer = TracerProvider().get_tracer("caller")
        async with open_channel(
            f"127.0.0.1:{server.port}", token=StaticToken(session_crm_signer().mint("crm", ["loc-a"]))
        ) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            with caller_tracer.start_as_current_span("crm request") as parent:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                await threading_pb2_grpc.ThreadingServiceStub(channel).GetConversation(
                    threading_pb2.GetConversationRequest(location_id="loc-a", conversation_id="c1"),
                    metadata=tuple(carrier.items()),
                )
    finally:
        await server.stop(0)
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["/mailsync.v1.ThreadingService/GetConversation"]
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.attributes is not None and span.attributes.get("rpc.method") == "GetConversation"
