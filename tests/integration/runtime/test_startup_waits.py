"""A service whose dependencies are not there yet waits for them instead of exiting: alive but not ready on its
health port, one WARNING, then serving once NATS, the database or the migration Job has appeared (real
processes, a real nats-server started late, real SQLite and PostgreSQL, real gRPC health over loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from services.runtime.db import normalize_url
from services.runtime.health import LIVENESS_SERVICE
from services.runtime.service import start_service, stop_service
from services.threading.app import build
from services.threading.settings import ThreadingSettings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.services import crm_public_keys_value, new_token_keys_value, service_settings
from tools.ports import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PATIENCE_SECONDS = 120.0

pytestmark = pytest.mark.timeout(300)


async def health_of(port: int, service: str = "") -> int | None:
    """The status a probe sees, or None when nothing answers on the port."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError:
            return None
    return int(answer.status)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + PATIENCE_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {PATIENCE_SECONDS:g} s: {what}")


class ThreadingProcess:
    """`python -m services.threading` with its own health port, logging JSON lines to a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *, command: str = "serve") -> None:
        self.health_port = int(env["MAILSYNC_THREADING_HEALTH_PORT"])
        self.grpc_port = int(env["MAILSYNC_THREADING_GRPC_PORT"])
        self.log_path = tmp_path / f"threading-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.threading", command], env=env, stdout=log, stderr=log
            )

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=PATIENCE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    async def alive_but_not_ready(self) -> bool:
        assert self.running(), self.log_path.read_text(errors="replace")
        return (
            await health_of(self.health_port, LIVENESS_SERVICE) == SERVING
            and await health_of(self.health_port) == NOT_SERVING
        )

    async def ready(self) -> bool:
        assert self.running(), self.log_path.read_text(errors="replace")
        return await health_of(self.health_port) == SERVING and await health_of(self.grpc_port) == SERVING


def threading_env(tmp_path: Path, nats_url: str, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MAILSYNC_", "OTEL_"))}
    env.update(
        {
            "MAILSYNC_NATS_URL": nats_url,
            "MAILSYNC_SERVICE_TOKEN_KEYS": new_token_keys_value(),
            "MAILSYNC_CRM_TOKEN_PUBLIC_KEYS": crm_public_keys_value(),
            "MAILSYNC_DATA_DIR": str(tmp_path / "data"),
            "MAILSYNC_THREADING_GRPC_PORT": str(free_port()),
            "MAILSYNC_THREADING_HEALTH_PORT": str(free_port()),
            "MAILSYNC_NATS_CONNECT_TIMEOUT_SECONDS": "1",
            "MAILSYNC_DEPENDENCY_RETRY_MAX_SECONDS": "0.5",
            "MAILSYNC_GRPC_SHUTDOWN_GRACE_SECONDS": "1",
        }
    )
    env.update(variables)
    return env


@pytest.fixture
def late_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with its port chosen but not started: the test starts it when it wants NATS to appear."""
    server = NatsServer(tmp_path / "late-nats")
    yield server
    server.stop()


async def test_a_service_started_before_nats_waits_alive_and_not_ready_then_serves(
    tmp_path: Path, late_nats: NatsServer
) -> None:
    service = ThreadingProcess(tmp_path, threading_env(tmp_path, late_nats.url))
    try:
        await until(
            service.alive_but_not_ready, "liveness SERVING and readiness NOT_SERVING while NATS is away"
        )

        async def warned() -> bool:
            return any(r["message"] == "waiting for a dependency" for r in service.records())

        await until(warned, "the warning that names what the service waits for")
        assert await health_of(service.grpc_port) is None, (
            "the gRPC port opens only once the service can serve"
        )

        late_nats.start()
        await until(service.ready, "readiness SERVING on both ports once NATS is up")
    finally:
        status = service.stop()
    assert status == 0
    records = service.records()
    waiting = [r for r in records if r["message"] == "waiting for a dependency"]
    assert len(waiting) == 1, "one WARNING for the whole wait, not one per attempt"
    assert waiting[0]["severity"] == "WARNING"
    assert waiting[0]["setting"] == "MAILSYNC_NATS_URL"
    (reached,) = [r for r in records if r["message"] == "dependency reachable after waiting"]
    assert reached["failed_attempts"] >= 1
    # The stop names its signal, so a stop is told from a crash or a service that stopped itself.
    (stopping,) = [r for r in records if r["message"] == "stopping on SIGTERM"]
    assert stopping["severity"] == "INFO"


async def test_a_stop_while_waiting_ends_the_process_with_status_zero(
    tmp_path: Path, late_nats: NatsServer
) -> None:
    service = ThreadingProcess(tmp_path, threading_env(tmp_path, late_nats.url))
    await until(service.alive_but_not_ready, "the service waiting for NATS")
    assert service.stop() == 0


async def test_liveness_stays_serving_while_nats_is_down_after_start(
    nats_server: Any, tmp_path: Path, token_keys_value: str, run_service_in_process: Any
) -> None:
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=DatabaseTarget("sqlite", f"sqlite:///{tmp_path / 'threading.db'}", None),
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
    )
    running = await run_service_in_process(settings, build)
    assert await health_of(running.port) == SERVING
    nats_server.kill()

    async def readiness_lost() -> bool:
        return await health_of(running.port) == NOT_SERVING

    await until(readiness_lost, "readiness NOT_SERVING while NATS is down")
    # Negative control above: readiness does fall. Liveness does not, so kubelet restarts nothing.
    assert await health_of(running.port, LIVENESS_SERVICE) == SERVING


async def test_without_migrate_on_start_a_service_waits_for_the_migration_job(
    tmp_path: Path, nats_server: Any
) -> None:
    database = tmp_path / "data" / "threading.db"
    env = threading_env(
        tmp_path,
        nats_server.url,
        MAILSYNC_THREADING_MIGRATE_ON_START="false",
        MAILSYNC_THREADING_DATABASE_URL=f"sqlite:///{database}",
    )
    service = ThreadingProcess(tmp_path, env)
    try:
        await until(service.alive_but_not_ready, "the service waiting for its migrations")
        # Negative control: nothing migrated the database while it waited.
        with sqlite3.connect(database) as connection:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        assert "alembic_version" not in tables

        job = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.threading", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=PATIENCE_SECONDS,
        )
        assert job.returncode == 0, job.stderr
        await until(service.ready, "readiness SERVING once the migration Job has run")
    finally:
        assert service.stop() == 0
    waiting = [r for r in service.records() if r["message"] == "waiting for a dependency"]
    assert [r["setting"] for r in waiting] == ["MAILSYNC_THREADING_MIGRATE_ON_START"]
    assert "this code needs" in waiting[0]["reason"]


async def test_a_database_newer_than_the_code_is_served_with_a_warning(
    tmp_path: Path, nats_server: Any, token_keys_value: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = DatabaseTarget("sqlite", f"sqlite:///{tmp_path / 'threading.db'}", None)
    common = {
        "nats_url": nats_server.url,
        "database": target,
        "token_keys_value": token_keys_value,
        "data_dir": tmp_path,
    }
    first = await start_service(service_settings(ThreadingSettings, **common), build)
    await stop_service(first)
    # A later release's expand migration ran: the revision is one this code does not know.
    with sqlite3.connect(tmp_path / "threading.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00000000001'")
    settings = service_settings(ThreadingSettings, migrate_on_start=False, **common)
    running = await asyncio.wait_for(start_service(settings, build), PATIENCE_SECONDS)
    try:
        assert await health_of(running.port) == SERVING
    finally:
        await stop_service(running)
    assert any("newer than this code" in r.getMessage() for r in caplog.records)


def _admin_engine(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")


async def test_a_database_that_is_not_there_yet_is_waited_for_and_a_file_database_is_not(
    tmp_path: Path, nats_server: Any, database_target: DatabaseTarget
) -> None:
    if database_target.backend == "sqlite":
        # A SQLite path that cannot be created is a wrong setting, never "not there yet": exit 2 at once.
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the database's folder should be")
        env = threading_env(
            tmp_path, nats_server.url, MAILSYNC_THREADING_DATABASE_URL=f"sqlite:///{blocker / 'x' / 't.db'}"
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.threading"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "MAILSYNC_THREADING_DATABASE_URL" in result.stderr
        return
    name = f"mailsync_late_{uuid.uuid4().hex[:10]}"
    late_url = make_url(normalize_url(database_target.url)).set(database=name)
    env = threading_env(
        tmp_path,
        nats_server.url,
        MAILSYNC_THREADING_DATABASE_URL=late_url.render_as_string(hide_password=False),
    )
    admin = _admin_engine(database_target.url)
    service = ThreadingProcess(tmp_path, env)
    try:
        await until(service.alive_but_not_ready, "the service waiting for its database")
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        await until(service.ready, "readiness SERVING once the database exists")
    finally:
        assert service.stop() == 0
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    waiting = [r for r in service.records() if r["message"] == "waiting for a dependency"]
    assert [r["setting"] for r in waiting] == ["MAILSYNC_THREADING_DATABASE_URL"]
