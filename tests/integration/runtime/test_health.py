"""gRPC health follows the real dependencies: SERVING when up, NOT_SERVING while NATS is down and during a
graceful shutdown (real nats-server, real database, real gRPC on loopback)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.grpc_client import open_channel
from services.runtime.service import RunningService, stop_service
from services.threading.app import build
from services.threading.settings import ThreadingSettings
from tests.fixtures.services import service_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def start_threading(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> RunningService:
    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=database_target,
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
    )
    return await run_service_in_process(settings, build)


async def check(port: int, service: str = "") -> int:
    async with open_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(response.status)


async def wait_for_status(port: int, expected: int, *, within: float = 15.0) -> None:
    """Polls health until it reports `expected` (fails with the last status seen)."""
    deadline = asyncio.get_running_loop().time() + within
    status = -1
    while asyncio.get_running_loop().time() < deadline:
        status = await check(port)
        if status == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {status}, expected {expected}")


async def test_health_is_serving_once_started(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    running = await start_threading(
        nats_server, database_target, token_keys_value, tmp_path, run_service_in_process
    )
    assert await check(running.port) == SERVING


async def test_health_is_not_serving_while_nats_is_down_and_recovers_when_it_returns(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    running = await start_threading(
        nats_server, database_target, token_keys_value, tmp_path, run_service_in_process
    )
    assert await check(running.port) == SERVING

    nats_server.kill()
    await wait_for_status(running.port, NOT_SERVING)
    assert "nats" in running.grpc.health.failing

    nats_server.start()
    await wait_for_status(running.port, SERVING)
    assert running.grpc.health.failing == {}


async def test_health_turns_not_serving_at_the_start_of_a_graceful_shutdown(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    running = await start_threading(
        nats_server, database_target, token_keys_value, tmp_path, run_service_in_process
    )
    seen: list[int] = []
    async with open_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        seen.append((await watch.read()).status)
        stopping = asyncio.create_task(stop_service(running))
        # The watcher hears NOT_SERVING while the server still drains, before the stream is closed.
        seen.append((await asyncio.wait_for(watch.read(), 10)).status)
        await stopping
    assert seen == [SERVING, NOT_SERVING]


async def test_a_stopped_service_refuses_calls(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    running = await start_threading(
        nats_server, database_target, token_keys_value, tmp_path, run_service_in_process
    )
    await stop_service(running)
    try:
        await check(running.port)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    else:
        raise AssertionError("a stopped server answered a health check")


async def test_health_is_not_serving_while_nats_is_frozen(
    nats_server: Any, database_target: Any, token_keys_value: str, tmp_path: Path, run_service_in_process: Any
) -> None:
    """A frozen server (SIGSTOP) keeps the TCP connection open, so the client still says it is connected: only the
    round trip the check makes finds it gone."""
    running = await start_threading(
        nats_server, database_target, token_keys_value, tmp_path, run_service_in_process
    )
    assert await check(running.port) == SERVING
    nats_server.process.send_signal(signal.SIGSTOP)
    try:
        await wait_for_status(running.port, NOT_SERVING, within=60)
        assert running.components.nats.is_connected
        assert "nats" in running.grpc.health.failing
    finally:
        nats_server.process.send_signal(signal.SIGCONT)
    await wait_for_status(running.port, SERVING, within=60)
