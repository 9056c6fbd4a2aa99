"""The asyncio gRPC server every service runs: interceptors, health, reflection, limits and optional TLS.

Interceptors, outermost first: OpenTelemetry, the error boundary (every failure becomes a bounded status; the
unexpected ones INTERNAL with a logged error id), authentication, validation of every request field
(services.runtime.api_limits), tenant scoping. Health and reflection need no token. Stopping is graceful: health goes NOT_SERVING first, then in-flight RPCs get
`grace` seconds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from services.runtime.api_limits import FIELD_RULES
from services.runtime.errors import ErrorBoundaryInterceptor
from services.runtime.grpc_auth import AuthenticationInterceptor, TenantScopeInterceptor, TokenVerifier
from services.runtime.health import HealthMonitor
from services.runtime.rpc_observability import RpcObservabilityInterceptor
from services.runtime.settings import ConfigurationError, ServiceSettings
from services.runtime.telemetry import server_interceptor
from services.runtime.validation import ValidationInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServicerRegistration:
    """One gRPC service a process serves.

    `service` is the descriptor (`threading_pb2.DESCRIPTOR.services_by_name["ThreadingService"]`),
    `add_to_server` the generated `add_<Name>Servicer_to_server`, and `internal_methods` the short names of
    the methods only service callers may use (e.g. {"GetAccessToken"}).
    """

    service: ServiceDescriptor
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    internal_methods: frozenset[str] = field(default_factory=frozenset)

    @property
    def full_name(self) -> str:
        return self.service.full_name

    def internal_method_paths(self) -> set[str]:
        """The internal methods as the full paths gRPC routes on ("/mailsync.v1.AuthService/GetAccessToken")."""
        unknown = self.internal_methods - set(self.service.methods_by_name)
        if unknown:
            raise ValueError(f"{self.full_name} has no method(s) {sorted(unknown)} to mark internal")
        return {f"/{self.full_name}/{name}" for name in self.internal_methods}


def _read_pem(path: Any, variable: str) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (None: plaintext); mTLS when a client cert is required."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    variable = settings.variable_for
    key = _read_pem(settings.tls_key_file, variable("tls_key_file"))
    cert = _read_pem(settings.tls_cert_file, variable("tls_cert_file"))
    ca = _read_pem(settings.tls_ca_file, variable("tls_ca_file")) if settings.tls_ca_file else None
    if settings.tls_require_client_cert and ca is None:
        raise ConfigurationError(
            f"{variable('tls_require_client_cert')}: requiring client certificates needs a CA"
        )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=settings.tls_require_client_cert
    )


def _ensure_bindable(settings: ServiceSettings) -> None:
    """Fails with a clear line when the port is taken (gRPC itself would also log a C-core error to stderr)."""
    if settings.grpc_port == 0:
        return
    host = settings.grpc_host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host or None, settings.grpc_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"{settings.variable_for('grpc_host')}: cannot resolve {host!r}: {exc}"
        ) from None
    family, kind, proto, _name, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # The same reuse rule gRPC applies, so a port in TIME_WAIT is not reported as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ConfigurationError(
                f"{settings.variable_for('grpc_port')}: cannot listen on {host}:{settings.grpc_port}: "
                f"{exc.strerror or exc}"
            ) from None


@dataclass
class GrpcServer:
    """A started server and the port it listens on."""

    server: grpc.aio.Server
    port: int
    health: HealthMonitor

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING for every service, then up to `grace` seconds for in-flight RPCs."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    settings: ServiceSettings,
    registrations: Sequence[ServicerRegistration],
    health_monitor: HealthMonitor,
    keys: TokenVerifier,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    extra_interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
) -> GrpcServer:
    """Builds, binds and starts the server; health checks run once before it accepts calls."""
    internal_methods = set().union(*(r.internal_method_paths() for r in registrations))
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        interceptors=[
            server_interceptor(tracer_provider),
            RpcObservabilityInterceptor(),
            ErrorBoundaryInterceptor(),
            AuthenticationInterceptor(keys),
            # Before tenant scoping, so the location it compares (and may name in a refusal) is a valid id.
            ValidationInterceptor(FIELD_RULES),
            TenantScopeInterceptor(internal_methods),
            *extra_interceptors,
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC shares a port with any other SO_REUSEPORT listener by default: a second server started on a
            # taken port would silently receive part of the first one's calls instead of failing to start.
            ("grpc.so_reuseport", 0),
        ],
    )
    for registration in registrations:
        registration.add_to_server(registration.servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_monitor.servicer, server)
    reflection.enable_server_reflection(
        [*(r.full_name for r in registrations), health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    _ensure_bindable(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"{settings.variable_for('grpc_port')}: cannot listen on {address}: {exc}"
        ) from None
    await health_monitor.start()
    await server.start()
    log.info(
        "gRPC server listening",
        extra={"address": f"{settings.grpc_host}:{port}", "tls": credentials is not None},
    )
    return GrpcServer(server=server, port=port, health=health_monitor)
