"""The generic service process: load settings, build the components, serve until a signal, clean up.

A service's `app.build(settings)` starts from `open_foundation(...)` (database migrated, NATS connected,
streams declared, health checks for both) and adds its servicers and background tasks to the returned
`ServiceComponents`. `run_service(...)` is the whole of a service's `__main__`.

Bad configuration never produces a traceback: startup problems print one line naming the problem to stderr and
exit with status 2. A dependency that is not there yet is not a bad setting: the process waits for NATS, the
database and (without `migrate_on_start`) the migration Job, with backoff, its health alive but not ready
(`health_port` serves it from the first moment), and exits with status 69 only if `dependency_wait_seconds`
runs out.
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

import nats.errors
import nats.js.errors
from grpc_health.v1 import health
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from services.runtime.backlog_gauges import BacklogGauges
from services.runtime.consumer import PullLoop
from services.runtime.db import Database, DatabaseConfigError, migrate, open_database
from services.runtime.deadletters import run_cli
from services.runtime.dependency_wait import (
    EXIT_UNAVAILABLE,
    DependencyUnavailable,
    RetryPolicy,
    TransientFailure,
    wait_for,
)
from services.runtime.grpc_auth import ServiceTokenKeys, TokenVerifier
from services.runtime.grpc_server import GrpcServer, ServicerRegistration, start_grpc_server
from services.runtime.health import (
    HealthCheck,
    HealthMonitor,
    HealthServer,
    database_check,
    nats_check,
    start_health_server,
    starting_health_servicer,
)
from services.runtime.logging import configure_logging
from services.runtime.migrations import revision_status
from services.runtime.nats_client import NatsUnavailable, connect
from services.runtime.outbox import OutboxRelay
from services.runtime.production import check_production_settings
from services.runtime.settings import ConfigurationError, ServiceSettings, unknown_variables
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
    # The internal ring this service mints its outgoing calls' tokens with; the verifier also knows the CRM's keys.
    token_keys: ServiceTokenKeys
    token_verifier: TokenVerifier
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


def startup_retry_policy(settings: ServiceSettings) -> RetryPolicy:
    return RetryPolicy(
        max_delay_seconds=settings.dependency_retry_max_seconds,
        give_up_after_seconds=settings.dependency_wait_seconds,
    )


async def open_database_ready(
    settings: ServiceSettings, migrations_dir: Path, *, migrate_now: bool | None = None
) -> Database:
    """Opens the service's database once it answers, then migrates it (`migrate_on_start`, or `migrate_now`) or
    waits until the migration Job has brought it to this code's revision. StartupError when it cannot work."""
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
    except OSError as exc:
        # The SQLite file's folder cannot be created (a file in the way, no permission).
        raise StartupError(f"{variable}: cannot use the database: {exc}") from None
    policy = startup_retry_policy(settings)
    where = database.engine.url.render_as_string(hide_password=True)
    try:
        await wait_for(
            lambda: _ping(database, variable), what=f"the database {where}", variable=variable, policy=policy
        )
        if settings.migrate_on_start if migrate_now is None else migrate_now:
            try:
                await migrate(database, migrations_dir)
            except (DBAPIError, SQLAlchemyError, OSError) as exc:
                raise StartupError(f"{variable}: cannot use the database: {_first_line(exc)}") from None
        else:
            await wait_for(
                lambda: _migrated_by_someone_else(database, migrations_dir),
                what=f"the migrations of {where} (`python -m services.{settings.service_name} migrate`)",
                variable=settings.variable_for("migrate_on_start"),
                policy=policy,
            )
    except BaseException:
        await database.dispose()
        raise
    return database


async def open_database_unchanged(settings: ServiceSettings, migrations_dir: Path) -> Database:
    """The service's database for an operator's command: never migrated, never waited for. StartupError when it
    does not answer or is not at a revision this code can read (say which command fixes that)."""
    variable = settings.variable_for("database_url")
    try:
        database = open_database(settings.database_url, schema=settings.database_schema, pool_size=1)
    except DatabaseConfigError as exc:
        raise StartupError(f"{variable}: {exc}") from None
    except OSError as exc:
        raise StartupError(f"{variable}: cannot use the database: {exc}") from None
    try:
        await _ping(database, variable)
        await _migrated_by_someone_else(database, migrations_dir)
    except TransientFailure as exc:
        await database.dispose()
        raise StartupError(
            f"{variable}: {exc} (this command never migrates: `python -m services.{settings.service_name} migrate`)"
        ) from None
    except BaseException:
        await database.dispose()
        raise
    return database


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


async def _ping(database: Database, variable: str) -> None:
    try:
        await database.ping()
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        if database.dialect == "sqlite":
            # A file database is never "not there yet": the path or its permissions are wrong.
            raise StartupError(f"{variable}: cannot use the database: {_first_line(exc)}") from None
        raise TransientFailure(_first_line(exc)) from None


async def _migrated_by_someone_else(database: Database, migrations_dir: Path) -> None:
    try:
        async with database.engine.connect() as connection:
            status = await connection.run_sync(
                lambda sync: revision_status(sync, migrations_dir, database.schema)
            )
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise TransientFailure(_first_line(exc)) from None
    if not status.usable:
        raise TransientFailure(status.describe())
    if status.ahead:
        log.warning(
            "the database is newer than this code (a later release migrated it); serving, as expand/contract "
            "migrations keep the previous release working",
            extra={"status": status.describe()},
        )


# JetStream answers these while a cluster is forming or has no meta leader: not there yet, not a bad setting.
_JETSTREAM_NOT_READY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)


def nats_url_missing(settings: ServiceSettings) -> str:
    return (
        f"{settings.variable_for('nats_url')} is not set: point it at the NATS server with JetStream, e.g. "
        "MAILSYNC_NATS_URL=nats://127.0.0.1:4222 (`make run` starts one and sets it)"
    )


async def connect_nats_ready(settings: ServiceSettings) -> tuple[NatsClient, JetStreamContext]:
    """Connects to NATS and declares the streams once JetStream answers, waiting (with backoff) until then."""

    if not settings.nats_url:
        raise StartupError(nats_url_missing(settings))

    async def attempt() -> tuple[NatsClient, JetStreamContext]:
        try:
            client = await connect(
                settings.nats_url,
                name=f"mailsync-{settings.service_name}",
                connect_timeout=settings.nats_connect_timeout_seconds,
            )
        except NatsUnavailable as exc:
            raise TransientFailure(str(exc)) from None
        jetstream = client.jetstream()
        try:
            await declare_streams(jetstream, replicas=settings.stream_replicas)
        except _JETSTREAM_NOT_READY as exc:
            await client.close()
            raise TransientFailure(f"JetStream is not available yet: {exc!r}") from None
        except BaseException as exc:
            await client.close()
            if not isinstance(exc, Exception):
                raise
            raise StartupError(
                f"cannot declare JetStream streams on {settings.nats_url} with {settings.stream_replicas} "
                f"replica(s) ({settings.variable_for('stream_replicas')}): {exc}"
            ) from None
        return client, jetstream

    return await wait_for(
        attempt,
        what=f"NATS at {settings.nats_url}",
        variable=settings.variable_for("nats_url"),
        policy=startup_retry_policy(settings),
    )


async def open_foundation(settings: ServiceSettings, migrations_dir: Path) -> ServiceComponents:
    """The parts every service has: migrated database, NATS and JetStream with the streams declared, health."""
    try:
        verifier = TokenVerifier.parse(settings.service_token_keys, settings.crm_token_public_keys)
    except ConfigurationError as exc:
        raise StartupError(str(exc)) from None
    if not settings.nats_url:
        # Before the database is touched: a service pointed at no NATS does nothing at all.
        raise StartupError(nats_url_missing(settings))
    database = await open_database_ready(settings, migrations_dir)
    try:
        nats_client, jetstream = await connect_nats_ready(settings)
    except BaseException:
        await database.dispose()
        raise
    components = ServiceComponents(
        settings=settings,
        database=database,
        nats=nats_client,
        jetstream=jetstream,
        token_keys=verifier.internal,
        token_verifier=verifier,
    )
    components.add_health_check("database", database_check(database))
    components.add_health_check("nats", nats_check(nats_client))
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
    settings: ServiceSettings,
    build: Callable[[Any], Awaitable[ServiceComponents]],
    *,
    health_servicer: health.aio.HealthServicer | None = None,
) -> RunningService:
    """Builds the components, starts gRPC (health checked once first) and the background tasks.

    `health_servicer` is the one a health-only server already answers probes with while the build waits."""
    components = await build(settings)
    monitor = HealthMonitor(
        components.health_checks,
        [r.full_name for r in components.servicers],
        interval_seconds=settings.health_check_interval_seconds,
        servicer=health_servicer,
    )
    try:
        grpc_server = await start_grpc_server(
            settings, components.servicers, monitor, components.token_verifier
        )
    except ConfigurationError as exc:
        await _release(components)
        raise StartupError(str(exc)) from None
    gauges = backlog_gauges_of(components)
    components.add_background("backlog-gauges", gauges.run, gauges.stop)
    tasks = {task.name: asyncio.create_task(task.run(), name=task.name) for task in components.background}
    return RunningService(components=components, grpc=grpc_server, tasks=tasks)


def backlog_gauges_of(components: ServiceComponents) -> BacklogGauges:
    """The backlog poller of a built service: its database, and the durable consumers its background tasks run."""
    consumers = [
        loop.spec
        for task in components.background
        if isinstance(loop := getattr(task.run, "__self__", None), PullLoop)
    ]
    return BacklogGauges(
        components.database,
        components.jetstream,
        consumers,
        pool_name=components.settings.service_name,
    )


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
    """Runs the service until SIGTERM/SIGINT (or `stop` is set); returns the process exit status.

    A stop that arrives while the service still waits for its dependencies ends the wait: status 0."""
    telemetry = configure_telemetry(settings.service_name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, _stop_on_signal, signum, stop, settings.service_name)
    health_servicer = await starting_health_servicer()
    probes: HealthServer | None = None
    try:
        if settings.health_port:
            probes = await _start_probes(settings, health_servicer)
        starting = asyncio.create_task(
            start_service(settings, build, health_servicer=health_servicer), name="start-service"
        )
        stop_waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("service stopped before it had started", extra={"service": settings.service_name})
            return 0
        stop_waiter.cancel()
        running = starting.result()
        log.info("service started", extra={"service": settings.service_name, "port": running.port})
        status = await _wait_for_stop(stop, running)
        log.info("service stopping", extra={"service": settings.service_name})
        await stop_service(running)
        log.info("service stopped", extra={"service": settings.service_name})
        return status
    finally:
        if probes is not None:
            await probes.stop()
        await telemetry.shutdown()


def _stop_on_signal(signum: int, stop: asyncio.Event, service: str) -> None:
    """Logs which signal stops the service (once), so a stop is told from a crash or a stop the service chose."""
    if not stop.is_set():
        log.info("stopping on %s", signal.Signals(signum).name, extra={"service": service})
    stop.set()


async def _start_probes(settings: ServiceSettings, servicer: health.aio.HealthServicer) -> HealthServer:
    try:
        return await start_health_server(settings.grpc_host, settings.health_port, servicer)
    except RuntimeError as exc:
        raise StartupError(
            f"{settings.variable_for('health_port')}: cannot listen on "
            f"{settings.grpc_host}:{settings.health_port}: {exc}"
        ) from None


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
    if command in ("-h", "--help", "help"):
        print(usage(settings_cls))
        sys.exit(0)
    if command not in ("serve", "migrate", "dead-letters"):
        _fail(
            program,
            f"unknown command {command!r}: use 'serve' (default), 'migrate' or 'dead-letters' "
            f"(python -m {program} --help)",
        )
    if command in ("serve", "migrate") and any(a in ("-h", "--help") for a in args[1:]):
        print(usage(settings_cls))
        sys.exit(0)
    try:
        settings = settings_cls.load()
        # Commands other than serve print their results on stdout, so their logs go to stderr.
        configure_logging(settings.log_level, stream=sys.stdout if command == "serve" else sys.stderr)
        for variable, closest in unknown_variables(settings_cls):
            log.warning(
                f"{variable} is not a setting of {settings_cls.service_name} and is ignored"
                + (f": did you mean {closest}?" if closest else " (docs/configuration.md lists them)"),
                extra={"variable": variable, "did_you_mean": closest or ""},
            )
        if command == "migrate":
            asyncio.run(_migrate_only(settings, migrations_dir))
            sys.exit(0)
        if command == "dead-letters":
            sys.exit(
                asyncio.run(
                    _dead_letters(settings, migrations_dir, args[1:], f"python -m {program} dead-letters")
                )
            )
        check_production_settings(settings)
        sys.exit(asyncio.run(serve(settings, build)))
    except (ConfigurationError, StartupError) as exc:
        _fail(program, str(exc))
    except DependencyUnavailable as exc:
        _fail(program, str(exc), status=EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        sys.exit(130)


async def _migrate_only(settings: ServiceSettings, migrations_dir: Path) -> None:
    # A migration Job may start before the database is reachable: it waits like a service does.
    database = await open_database_ready(settings, migrations_dir, migrate_now=True)
    await database.dispose()


def usage(settings_cls: type[ServiceSettings]) -> str:
    name = settings_cls.service_name
    return f"""usage: python -m services.{name} [serve | migrate | dead-letters ...]

  serve          run the {name} service (the default): gRPC, health, its consumers; stops on SIGTERM/SIGINT
  migrate        apply the service's database migrations, then exit (a deploy's migration Job)
  dead-letters   list | show ID | redrive ID | discard ID: messages its consumers gave up on
                 (python -m services.{name} dead-letters --help); never migrates the database

Settings are environment variables (MAILSYNC_<FIELD>, or MAILSYNC_{name.upper()}_<FIELD> for this service only),
every one listed in docs/configuration.md; MAILSYNC_NATS_URL has no default outside `make run`. A bad setting
stops the service with one line naming the variable and exit status 2; a dependency that does not answer
within MAILSYNC_DEPENDENCY_WAIT_SECONDS, exit status 69."""


async def _dead_letters(settings: ServiceSettings, migrations_dir: Path, argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        # Help needs no database.
        return await run_cli(argv or ["--help"], db=None, nats_url=settings.nats_url, prog=prog)
    database = await open_database_unchanged(settings, migrations_dir)
    try:
        return await run_cli(argv, db=database, nats_url=settings.nats_url, prog=prog)
    finally:
        await database.dispose()


def _fail(program: str, message: str, *, status: int = EXIT_CONFIGURATION) -> NoReturn:
    print(f"{program}: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(status)
