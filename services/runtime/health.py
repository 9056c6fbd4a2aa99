"""gRPC health (`grpc.health.v1`) driven by real dependency checks: readiness and liveness apart.

Readiness is the server ("") and every registered service: a monitor runs every named check (database ping,
NATS round trip, ...) on an interval and sets SERVING only while all of them pass; one failure flips all to
NOT_SERVING, and graceful shutdown sets them NOT_SERVING for good. Liveness is the `liveness` service: SERVING
from the moment the process starts until it exits, whatever its dependencies do, so an outage of NATS or the
database takes pods out of rotation without restarting them. Both answer only while the event loop runs.

Kubelet's gRPC probes speak plaintext only, so a process can also serve health alone on its own port
(`health_port`) from the start, before its dependencies are reachable and while the gRPC port uses TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient

from services.runtime.db import Database

HealthCheck = Callable[[], Awaitable[None]]
"""Raises (or times out) when the dependency is not usable."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS_SERVICE = "liveness"
"""The health service name a liveness probe asks for: SERVING while the process runs."""

log = logging.getLogger(__name__)


class DependencyDown(RuntimeError):
    """A health check found its dependency unusable."""


def database_check(database: Database) -> HealthCheck:
    """Passes when the database answers SELECT 1."""
    return database.ping


def nats_check(client: NatsClient, *, timeout_seconds: int = 2) -> HealthCheck:
    """Passes while the NATS client is connected and the server answers a round trip (PING/PONG) in time: a
    frozen server keeps the TCP connection open, so `is_connected` alone stays true while nothing gets through."""

    async def check() -> None:
        if not client.is_connected:
            raise DependencyDown("NATS is not connected")
        try:
            await client.flush(timeout=timeout_seconds)
        except Exception as exc:
            raise DependencyDown(
                f"NATS did not answer a round trip within {timeout_seconds:g} s ({type(exc).__name__})"
            ) from None

    return check


async def starting_health_servicer() -> health.aio.HealthServicer:
    """A health servicer for a process that has just started: alive, not ready."""
    servicer = health.aio.HealthServicer()
    await servicer.set("", NOT_SERVING)
    await servicer.set(LIVENESS_SERVICE, SERVING)
    return servicer


@dataclass
class HealthServer:
    """A plaintext gRPC server that serves only grpc.health.v1 (for kubelet probes)."""

    server: grpc.aio.Server
    port: int

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_health_server(host: str, port: int, servicer: health.aio.HealthServicer) -> HealthServer:
    """Serves `servicer` alone on host:port (0 picks a free port). It exposes nothing but statuses."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("health server listening", extra={"address": f"{host}:{bound}"})
    return HealthServer(server=server, port=bound)


class HealthMonitor:
    """Owns the readiness statuses of a health servicer and keeps them in step with the dependency checks."""

    def __init__(
        self,
        checks: Mapping[str, HealthCheck],
        service_names: Iterable[str] = (),
        *,
        interval_seconds: float = 1.0,
        check_timeout_seconds: float = 2.0,
        servicer: health.aio.HealthServicer | None = None,
    ) -> None:
        self.servicer = servicer or health.aio.HealthServicer()
        self._checks = dict(checks)
        self._service_names = ["", *service_names]
        self._interval = interval_seconds
        self._timeout = check_timeout_seconds
        self._failing: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False

    @property
    def failing(self) -> dict[str, str]:
        """The checks failing at the last run, with why."""
        return dict(self._failing)

    async def check_now(self) -> bool:
        """Runs every check once and publishes the result; True when all pass."""
        results = await asyncio.gather(*(self._run(name, check) for name, check in self._checks.items()))
        failing = {name: reason for name, reason in results if reason is not None}
        for name, reason in failing.items():
            if name not in self._failing:
                log.warning("health check failed", extra={"check": name, "reason": reason})
        for name in self._failing.keys() - failing.keys():
            log.info("health check recovered", extra={"check": name})
        self._failing = failing
        if self._shutting_down:
            return False
        status = NOT_SERVING if failing else SERVING
        for service in self._service_names:
            await self.servicer.set(service, status)
        await self.servicer.set(LIVENESS_SERVICE, SERVING)
        return not failing

    async def _run(self, name: str, check: HealthCheck) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(check(), self._timeout)
        except TimeoutError:
            return name, f"no answer within {self._timeout:g} s"
        except Exception as exc:
            return name, str(exc) or type(exc).__name__
        return name, None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_now()

    async def start(self) -> None:
        """Checks once (so the first answer is real), then keeps checking in the background."""
        await self.check_now()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def enter_graceful_shutdown(self) -> None:
        """Readiness NOT_SERVING for good (load balancers stop sending before the server stops); liveness stays
        SERVING until the process exits, so a probe never restarts a pod that is stopping on purpose."""
        self._shutting_down = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for service in self._service_names:
            await self.servicer.set(service, NOT_SERVING)
