"""gRPC health (`grpc.health.v1`) driven by real dependency checks.

A monitor runs every named check (database ping, NATS connected, ...) on an interval and sets SERVING for the
server ("") and every registered service only while all of them pass; one failure flips all to NOT_SERVING.
Graceful shutdown sets NOT_SERVING permanently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from grpc_health.v1 import health, health_pb2
from nats.aio.client import Client as NatsClient

from services.runtime.db import Database

HealthCheck = Callable[[], Awaitable[None]]
"""Raises (or times out) when the dependency is not usable."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = logging.getLogger(__name__)


class DependencyDown(RuntimeError):
    """A health check found its dependency unusable."""


def database_check(database: Database) -> HealthCheck:
    """Passes when the database answers SELECT 1."""
    return database.ping


def nats_check(client: NatsClient) -> HealthCheck:
    """Passes while the NATS client is connected (not reconnecting, not closed)."""

    async def check() -> None:
        if not client.is_connected:
            raise DependencyDown("NATS is not connected")

    return check


class HealthMonitor:
    """Owns the health servicer and keeps it in step with the dependency checks."""

    def __init__(
        self,
        checks: Mapping[str, HealthCheck],
        service_names: Iterable[str] = (),
        *,
        interval_seconds: float = 1.0,
        check_timeout_seconds: float = 2.0,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._checks = dict(checks)
        self._service_names = ["", *service_names]
        self._interval = interval_seconds
        self._timeout = check_timeout_seconds
        self._failing: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

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
        status = NOT_SERVING if failing else SERVING
        for service in self._service_names:
            await self.servicer.set(service, status)
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
        """NOT_SERVING for every service, for good: load balancers stop sending before the server stops."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.servicer.enter_graceful_shutdown()
