"""The generic service process: load settings, build the components, serve until a signal, clean up.

A service's `app.build(settings)` starts from `open_foundation(...)` (database migrated, NATS connected,
streams declared, health checks for both) and adds its servicers and background tasks to the returned
`ServiceComponents`. `run_service(...)` is the whole of a service's `__main__`.

Bad configuration never produces a traceback: startup problems print one line naming the problem to stderr and
exit with status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from services.runtime.db import Database, DatabaseConfigError, migrate, open_database
from services.runtime.deadletters import run_cli
from services.runtime.grpc_auth import TokenKeys
from services.runtime.grpc_server import GrpcServer, ServicerRegistration, start_grpc_server
from services.runtime.health import HealthCheck, HealthMonitor, database_check, nats_check
from services.runtime.logging import configure_logging
from services.runtime.nats_client import NatsUnavailable, connect
from services.runtime.outbox import OutboxRelay
from services.runtime.settings import ConfigurationError, ServiceSettings
from services.runtime.streams import declare_streams
from services.runtime.telemetry import configure_telemetry

log = logging.getLogger(__name__)

EXIT_CONFIGURATION = 2
EXIT_FAILURE = 1

Cleanup = Callable[[], Awaitable[None]]
S = TypeVar("S", bound=ServiceSettings)


class StartupError(RuntimeError):
    """The service cannot start; the message is one line naming the problem."""


@dataclass(frozen=True)
class BackgroundTask:
    """A long-running coroutine (a NATS consumer loop, a relay, a scheduler) the process runs beside gRPC.

    `stop` asks it to finish (it then has the shutdown grace to return); without one it is cancelled.
    A background task that ends on its own or fails stops the process, since the service is then incomplete.
    """

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], object] | None = None


@dataclass
class ServiceComponents:
    """Everything a service process runs, as its composition root wired it."""

    settings: ServiceSettings
    database: Database
    nats: NatsClient
    jetstream: JetStreamContext
    token_keys: TokenKeys
    servicers: list[ServicerRegistration] = field(default_factory=list)
    background: list[BackgroundTask] = field(default_factory=list)
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)
    # Run in reverse order after gRPC has stopped, background tasks have ended and NATS has drained.
    cleanups: list[Cleanup] = field(default_factory=list)

    def add_servicer(self, registration: ServicerRegistration) -> None:
        self.servicers.append(registration)

    def add_background(
        self,
        name: str,
        run: Callable[[], Coroutine[Any, Any, None]],
        stop: Callable[[], object] | None = None,
    ) -> None:
        self.background.append(BackgroundTask(name, run, stop))

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        self.health_checks[name] = check

    def add_cleanup(self, cleanup: Cleanup) -> None:
        self.cleanups.append(cleanup)


async def open_database_migrated(settings: ServiceSettings, migrations_dir: Path) -> Database:
    """Opens the service's database and applies its migrations; StartupError when it cannot."""
    variable = settings.variable_for("database_url")
    try:
        database = open_database(
            settings.database_url,
            schema=settings.database_schema,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
    except DatabaseConfigError as exc:
        raise StartupError(f"{variable}: {exc}") from None
    try:
        await migrate(database, migrations_dir)
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        await database.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"{variable}: cannot use the database: {reason}") from None
    return database


async def open_foundation(settings: ServiceSettings, migrations_dir: Path) -> ServiceComponents:
    """The parts every service has: migrated database, NATS and JetStream with the streams declared, health."""
    try:
        keys = TokenKeys.parse(settings.service_token_keys)
    except ConfigurationError as exc:
        raise StartupError(str(exc)) from None
    database = await open_database_migrated(settings, migrations_dir)
    try:
        nats = await connect(
            settings.nats_url,
            name=f"mailsync-{settings.service_name}",
            connect_timeout=settings.nats_connect_timeout_seconds,
        )
    except NatsUnavailable as exc:
        await database.dispose()
        raise StartupError(f"{settings.variable_for('nats_url')}: {exc}") from None
    jetstream = nats.jetstream()
    try:
        await declare_streams(jetstream)
    except Exception as exc:
        await nats.close()
        await database.dispose()
        raise StartupError(f"cannot declare JetStream streams on {settings.nats_url}: {exc}") from None
    components = ServiceComponents(
        settings=settings, database=database, nats=nats, jetstream=jetstream, token_keys=keys
    )
    components.add_health_check("database", database_check(database))
    components.add_health_check("nats", nats_check(nats))
    components.add_cleanup(database.dispose)
    relay = OutboxRelay(database, jetstream)
    components.add_background("outbox-relay", relay.run, relay.stop)
    return components


@dataclass
class RunningService:
    """A served process, for tests and the runner: the port it listens on and how to stop it."""

    components: ServiceComponents
    grpc: GrpcServer
    tasks: dict[str, asyncio.Task[None]]
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port


async def start_service(
    settings: ServiceSettings, build: Callable[[Any], Awaitable[ServiceComponents]]
) -> RunningService:
    """Builds the components, starts gRPC (health checked once first) and the background tasks."""
    components = await build(settings)
    monitor = HealthMonitor(
        components.health_checks,
        [r.full_name for r in components.servicers],
        interval_seconds=settings.health_check_interval_seconds,
    )
    try:
        grpc_server = await start_grpc_server(settings, components.servicers, monitor, components.token_keys)
    except ConfigurationError as exc:
        await _release(components)
        raise StartupError(str(exc)) from None
    tasks = {task.name: asyncio.create_task(task.run(), name=task.name) for task in components.background}
    return RunningService(components=components, grpc=grpc_server, tasks=tasks)


async def stop_service(running: RunningService) -> None:
    """Graceful stop: health NOT_SERVING, gRPC stop(grace), background tasks end, NATS drains, cleanups."""
    if running.stopped:
        return
    running.stopped = True
    settings = running.components.settings
    grace = settings.grpc_shutdown_grace_seconds
    await running.grpc.stop(grace)
    for background in running.components.background:
        if background.stop is not None:
            background.stop()
    pending = [t for t in running.tasks.values() if not t.done()]
    if pending:
        _done, still_running = await asyncio.wait(pending, timeout=max(grace, 0.1))
        for task in still_running:
            task.cancel()
        await asyncio.gather(*still_running, return_exceptions=True)
    await _release(running.components)


async def _release(components: ServiceComponents) -> None:
    try:
        await asyncio.wait_for(components.nats.drain(), timeout=5)
    except Exception as exc:
        log.warning("NATS did not drain cleanly", extra={"reason": str(exc) or type(exc).__name__})
        with contextlib.suppress(Exception):
            await components.nats.close()
    for cleanup in reversed(components.cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup failed")


async def serve(
    settings: ServiceSettings,
    build: Callable[[Any], Awaitable[ServiceComponents]],
    *,
    stop: asyncio.Event | None = None,
) -> int:
    """Runs the service until SIGTERM/SIGINT (or `stop` is set); returns the process exit status."""
    telemetry = configure_telemetry(settings.service_name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        running = await start_service(settings, build)
    except BaseException:
        await telemetry.shutdown()
        raise
    log.info("service started", extra={"service": settings.service_name, "port": running.port})
    status = await _wait_for_stop(stop, running)
    log.info("service stopping", extra={"service": settings.service_name})
    await stop_service(running)
    await telemetry.shutdown()
    log.info("service stopped", extra={"service": settings.service_name})
    return status


async def _wait_for_stop(stop: asyncio.Event, running: RunningService) -> int:
    stop_waiter = asyncio.create_task(stop.wait())
    watched: set[asyncio.Task[Any]] = {stop_waiter, *running.tasks.values()}
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if stop_waiter in done:
        return 0
    stop_waiter.cancel()
    for name, task in running.tasks.items():
        if task in done:
            error = task.exception() if not task.cancelled() else None
            log.error(
                "background task ended; stopping the service",
                extra={"task": name, "error": repr(error) if error else "returned"},
            )
    return EXIT_FAILURE


def run_service(
    settings_cls: type[S],
    build: Callable[[S], Awaitable[ServiceComponents]],
    migrations_dir: Path,
    argv: Sequence[str] | None = None,
) -> NoReturn:
    """The body of `python -m services.<svc> [serve | migrate | dead-letters ...]`; exits the process."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "serve"
    program = f"services.{settings_cls.service_name}"
    if command not in ("serve", "migrate", "dead-letters"):
        _fail(program, f"unknown command {command!r}: use 'serve' (default), 'migrate' or 'dead-letters'")
    try:
        settings = settings_cls.load()
        # Commands other than serve print their results on stdout, so their logs go to stderr.
        configure_logging(settings.log_level, stream=sys.stdout if command == "serve" else sys.stderr)
        if command == "migrate":
            asyncio.run(_migrate_only(settings, migrations_dir))
            sys.exit(0)
        if command == "dead-letters":
            sys.exit(
                asyncio.run(
                    _dead_letters(settings, migrations_dir, args[1:], f"python -m {program} dead-letters")
                )
            )
        sys.exit(asyncio.run(serve(settings, build)))
    except (ConfigurationError, StartupError) as exc:
        _fail(program, str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


async def _migrate_only(settings: ServiceSettings, migrations_dir: Path) -> None:
    database = await open_database_migrated(settings, migrations_dir)
    await database.dispose()


async def _dead_letters(settings: ServiceSettings, migrations_dir: Path, argv: list[str], prog: str) -> int:
    database = await open_database_migrated(settings, migrations_dir)
    try:
        return await run_cli(argv, db=database, nats_url=settings.nats_url, prog=prog)
    finally:
        await database.dispose()


def _fail(program: str, message: str) -> NoReturn:
    print(f"{program}: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_CONFIGURATION)
