"""Benchmark of individual sends: the real auth and outbound processes, a real nats-server and the Gmail sandbox as
its own process, on SQLite or PostgreSQL.

Two phases per database: one mailbox sending one email at a time (the serial baseline), then M mailboxes with one
send in flight each (a closed loop per mailbox) for a fixed time. Reports sends per second, latency p50/p95/p99 of
SendEmail as the CRM sees it, CPU milliseconds per send of each process (from /proc), and checks that the quota
used, the sends answered SENT and the copies in Gmail's Sent folders are the same number (the limit stays exact).
Run `python -m tools.bench_outbound [--mailboxes 20] [--seconds 10] [--serial 100]
[--database sqlite|postgresql|both] [--profile DIR]`; prints a table and, last, one JSON object (docs/outbound.md
has figures). `--profile DIR` samples outbound and auth with py-spy (a dev dependency) during the concurrent phase
and writes their collapsed stacks (flame graph input) to DIR.

`run_send_benchmark()` is importable (tools/bench_e2e.py can call it with its own stack description).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc, common_pb2, outbound_pb2, outbound_pb2_grpc
from sandbox.client import AdminClient
from services.auth.crypto import generate_key_text
from services.outbound.settings import OutboundSettings
from services.runtime.grpc_client import StaticToken, open_channel
from tests.fixtures.auth_service import AUTH_CLIENT_ID, AUTH_TOPIC, auth_settings
from tests.fixtures.databases import POSTGRES_URL_VARIABLE, DatabaseTarget, _drop_schema, postgres_url
from tests.fixtures.nats_server import NatsServer
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.services import (
    ServiceProcess,
    new_token_keys_value,
    service_settings,
    session_crm_signer,
    start_service_process,
)
from tools.ports import free_port

LOCATION = "bench-loc"
# The test fixtures' settings check health five times a second; the services run with their defaults here.
_AS_RUN = {"health_check_interval_seconds": 1.0, "grpc_shutdown_grace_seconds": 5.0}
DEFAULT_POSTGRES_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"


@dataclass
class PhaseResult:
    """One measured phase: how many sends, in how long, and each one's latency."""

    name: str
    mailboxes: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def percentile(share: float) -> float:
            if not ordered:
                return 0.0
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)

        return {
            "mailboxes": self.mailboxes,
            "sends": len(ordered),
            "seconds": round(self.seconds, 2),
            "sends_per_second": round(len(ordered) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(statistics.median(ordered), 1) if ordered else 0.0,
            "p95_ms": percentile(0.95),
            "p99_ms": percentile(0.99),
            "errors": dict(self.errors),
        }


@dataclass
class SendStack:
    """What the benchmark talks to: outbound's gRPC stub, auth's, the sandbox admin API, the user ids, and the
    processes whose CPU is counted (name -> pid)."""

    outbound: Any
    auth: Any
    sandbox: AdminClient
    auth_callback: Callable[[str], Awaitable[None]]
    users: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)


def cpu_seconds(pid: int, stat: str = "stat") -> float:
    """User plus system CPU time of a process so far (from /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/{stat}").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The Python services whose event-loop thread is reported apart from their other threads (database driver threads,
# the Gmail pool, gRPC's own): the loop thread is the one a single process cannot spread over cores.
_LOOP_THREAD_OF = ("outbound", "auth")


def cpu_snapshot(stack: SendStack) -> dict[str, float]:
    snapshot = {name: cpu_seconds(pid) for name, pid in stack.pids.items()}
    for name in _LOOP_THREAD_OF:
        if name in stack.pids:
            pid = stack.pids[name]
            snapshot[f"{name}_loop_thread"] = cpu_seconds(pid, f"task/{pid}/stat")
    return snapshot


def _request(user_id: str, index: int) -> outbound_pb2.SendEmailRequest:
    return outbound_pb2.SendEmailRequest(
        request_id=f"bench-{uuid.uuid4().hex}",
        location_id=LOCATION,
        user_id=user_id,
        kind=common_pb2.SEND_KIND_INDIVIDUAL,
        to=[common_pb2.EmailAddress(email=f"customer-{index % 7}@customers.example")],
        subject=f"Quote {index}",
        text_body="Hello,\n\nhere is the quote we talked about.\n\nBest regards\n",
    )


async def _send(stack: SendStack, user_id: str, index: int, phase: PhaseResult) -> None:
    started = time.perf_counter()
    try:
        answer = await stack.outbound.SendEmail(_request(user_id, index), timeout=120)
    except grpc.aio.AioRpcError as error:
        phase.errors[error.code().name] = phase.errors.get(error.code().name, 0) + 1
        return
    if answer.send.state != outbound_pb2.SEND_STATE_SENT:
        name = outbound_pb2.SendState.Name(answer.send.state)
        phase.errors[name] = phase.errors.get(name, 0) + 1
        return
    phase.latencies_ms.append((time.perf_counter() - started) * 1000)


async def serial_phase(stack: SendStack, sends: int) -> PhaseResult:
    phase = PhaseResult("1 mailbox, one send at a time", 1, 0.0)
    started = time.perf_counter()
    for index in range(sends):
        await _send(stack, stack.users[0], index, phase)
    phase.seconds = time.perf_counter() - started
    return phase


async def concurrent_phase(stack: SendStack, mailboxes: int, seconds: float) -> PhaseResult:
    phase = PhaseResult(f"{mailboxes} mailboxes, one send in flight each", mailboxes, 0.0)
    deadline = time.perf_counter() + seconds

    async def loop(user_id: str) -> None:
        index = 0
        while time.perf_counter() < deadline:
            await _send(stack, user_id, index, phase)
            index += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(user_id) for user_id in stack.users[:mailboxes]))
    phase.seconds = time.perf_counter() - started
    return phase


async def quota_used(stack: SendStack) -> dict[str, int]:
    used = {}
    for user_id in stack.users:
        answer = await stack.outbound.GetQuota(
            outbound_pb2.GetQuotaRequest(location_id=LOCATION, user_id=user_id), timeout=30
        )
        used[user_id] = answer.used
    return used


def sent_copies(stack: SendStack, mailboxes: int) -> int:
    total = 0
    for index in range(mailboxes):
        messages = stack.sandbox.messages(_address(index))
        total += sum(1 for message in messages if "SENT" in message["labelIds"])
    return total


def _address(index: int) -> str:
    return f"seller{index}@bench.example"


async def connect_mailboxes(stack: SendStack, count: int) -> None:
    """Users, their sandbox mailboxes (consumer accounts, limit far above the run) and connections via OAuth."""
    for index in range(count):
        user_id = f"seller-{index}"
        stack.sandbox.create_mailbox(_address(index), "pw", daily_send_limit=1_000_000)
        await stack.auth.UpsertUser(
            auth_pb2.UpsertUserRequest(
                user=auth_pb2.User(
                    user_id=user_id,
                    crm_email=f"{user_id}@crm.example",
                    display_name=f"Seller {index}",
                    location_ids=[LOCATION],
                    version=1,
                )
            )
        )
        begun = await stack.auth.BeginConnect(
            auth_pb2.BeginConnectRequest(user_id=user_id, location_id=LOCATION)
        )
        callback = stack.sandbox.approve(begun.authorization_url, _address(index))
        await stack.auth_callback(callback)
        stack.users.append(user_id)


def cpu_ms_per_send(before: dict[str, float], after: dict[str, float], sends: int) -> dict[str, float]:
    return {name: round((after[name] - before[name]) * 1000 / max(sends, 1), 2) for name in before}


def start_profilers(stack: SendStack, folder: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling outbound and auth for `seconds`, as collapsed stacks in `folder`.

    Only the thread holding the GIL is sampled (--gil): a thread waiting for the GIL shows the line it waits at, which
    under 20 concurrent sends made a third of the samples look like work in whatever line the loop thread was
    preempted at."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    folder.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(stack.pids[name]),
                "--duration",
                str(max(int(seconds), 1)),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(folder / f"{name}.collapsed"),
                "--nonblocking",
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("outbound", "auth")
    ]


async def run_send_benchmark(
    stack: SendStack, *, mailboxes: int, seconds: float, serial: int, profile: Path | None = None
) -> dict[str, Any]:
    """The two phases against a running stack whose users are connected; returns the figures."""
    # Warm-up: every mailbox's token, connection lookup and first Gmail client call are paid before measuring.
    warm = PhaseResult("warm-up", mailboxes, 0.0)
    await asyncio.gather(*(_send(stack, user_id, -1, warm) for user_id in stack.users[:mailboxes]))
    before = cpu_snapshot(stack)
    serial_result = await serial_phase(stack, serial)
    serial_cpu = cpu_ms_per_send(before, cpu_snapshot(stack), len(serial_result.latencies_ms))
    profilers = start_profilers(stack, profile, seconds) if profile is not None else []
    before = cpu_snapshot(stack)
    concurrent_result = await concurrent_phase(stack, mailboxes, seconds)
    concurrent_cpu = cpu_ms_per_send(before, cpu_snapshot(stack), len(concurrent_result.latencies_ms))
    for profiler in profilers:
        await asyncio.to_thread(profiler.wait, 60)
    expected = len(warm.latencies_ms) + len(serial_result.latencies_ms) + len(concurrent_result.latencies_ms)
    used = await quota_used(stack)
    copies = sent_copies(stack, mailboxes)
    serial_summary = serial_result.summary()
    concurrent_summary = concurrent_result.summary()
    return {
        "serial_1_mailbox": serial_summary,
        f"concurrent_{mailboxes}_mailboxes": concurrent_summary,
        "throughput_ratio_concurrent_to_serial": round(
            concurrent_summary["sends_per_second"] / max(serial_summary["sends_per_second"], 0.001), 2
        ),
        "cpu_ms_per_send_serial": serial_cpu,
        "cpu_ms_per_send_concurrent": concurrent_cpu,
        "quota_used_total": sum(used.values()),
        "sends_answered_sent": expected,
        "gmail_sent_copies": copies,
        "limit_exact": sum(used.values()) == expected == copies,
    }


async def _callback_opener(url: str) -> None:
    def open_url() -> None:
        request = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as error:
            if error.code >= 400:
                raise RuntimeError(f"OAuth callback answered {error.code}: {error.read()[:300]!r}") from error

    await asyncio.to_thread(open_url)


async def bench_database(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Starts nats, the sandbox, auth and outbound for one database, runs the phases, stops everything."""
    run_dir = work / backend
    run_dir.mkdir(parents=True)
    schemas: list[tuple[str, str]] = []

    def target(name: str) -> DatabaseTarget:
        if backend == "sqlite":
            return DatabaseTarget("sqlite", f"sqlite:///{run_dir / f'{name}.db'}", None)
        url = postgres_url() or DEFAULT_POSTGRES_URL
        schema = f"bench_{name}_{uuid.uuid4().hex[:10]}"
        schemas.append((url, schema))
        return DatabaseTarget("postgresql", url, schema)

    nats_server = NatsServer(run_dir / "nats")
    nats_server.start()
    sandbox = SandboxProcess().start()
    processes: list[ServiceProcess] = []
    channels: list[Any] = []
    try:
        admin = AdminClient(sandbox.url)
        keys_value = new_token_keys_value()
        http_port = free_port()
        auth = auth_settings(
            nats_url=nats_server.url,
            database=target("auth"),
            token_keys_value=keys_value,
            data_dir=run_dir,
            sandbox=_SandboxUrl(sandbox.url),  # type: ignore[arg-type]
            http_port=http_port,
            token_keys=generate_key_text(1),
        ).model_copy(update={"grpc_port": free_port(), **_AS_RUN})
        admin.register_client(AUTH_CLIENT_ID, "mailsync-test-secret", [auth.oauth_redirect_uri])
        admin.set_topic(AUTH_TOPIC)
        processes.append(await start_service_process(auth, run_dir / "auth.log"))
        outbound = service_settings(
            OutboundSettings,
            nats_url=nats_server.url,
            database=target("outbound"),
            token_keys_value=keys_value,
            data_dir=run_dir,
            auth_target=f"127.0.0.1:{auth.grpc_port}",
            gmail_root_url=sandbox.url,
        ).model_copy(update={"grpc_port": free_port(), **_AS_RUN})
        processes.append(await start_service_process(outbound, run_dir / "outbound.log"))
        crm = session_crm_signer().mint("crm", ["*"], ttl_seconds=3600)
        auth_channel = open_channel(f"127.0.0.1:{auth.grpc_port}", token=StaticToken(crm))
        outbound_channel = open_channel(f"127.0.0.1:{outbound.grpc_port}", token=StaticToken(crm))
        channels += [auth_channel, outbound_channel]
        stack = SendStack(
            outbound=outbound_pb2_grpc.OutboundServiceStub(outbound_channel),
            auth=auth_pb2_grpc.AuthServiceStub(auth_channel),
            sandbox=admin,
            auth_callback=_callback_opener,
            pids={
                "outbound": processes[1].process.pid,
                "auth": processes[0].process.pid,
                "sandbox": sandbox.process.pid if sandbox.process else 0,
                "nats": nats_server.process.pid if nats_server.process else 0,
                "benchmark_client": os.getpid(),
            },
        )
        await connect_mailboxes(stack, args.mailboxes)
        return await run_send_benchmark(
            stack,
            mailboxes=args.mailboxes,
            seconds=args.seconds,
            serial=args.serial,
            profile=args.profile / backend if args.profile else None,
        )
    finally:
        for channel in channels:
            await channel.close()
        for process in reversed(processes):
            await process.stop()
        sandbox.stop()
        nats_server.stop()
        for url, schema in schemas:
            _drop_schema(url, schema)


@dataclass(frozen=True)
class _SandboxUrl:
    """auth_settings reads only the sandbox's URL."""

    url: str


def _print_table(results: dict[str, Any]) -> None:
    header = f"{'database':<11} {'phase':<32} {'sends':>6} {'sends/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(header)
    for backend, figures in results.items():
        for name, phase in figures.items():
            if not isinstance(phase, dict) or "sends" not in phase:
                continue
            print(
                f"{backend:<11} {name:<32} {phase['sends']:>6} {phase['sends_per_second']:>8} "
                f"{phase['p50_ms']:>8} {phase['p95_ms']:>8} {phase['p99_ms']:>8}"
            )
        print(
            f"{backend:<11} ratio {figures['throughput_ratio_concurrent_to_serial']}, "
            f"limit exact: {figures['limit_exact']}"
        )
        print(f"{backend:<11} CPU ms per send, serial: {figures['cpu_ms_per_send_serial']}")
        print(f"{backend:<11} CPU ms per send, concurrent: {figures['cpu_ms_per_send_concurrent']}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-outbound-") as folder:
        for backend in backends:
            results[backend] = await bench_database(backend, args, Path(folder))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_outbound", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mailboxes", type=int, default=20, help="mailboxes sending at once (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the concurrent phase")
    parser.add_argument("--serial", type=int, default=100, help="sends of the serial phase")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql", "both"],
        default="both" if postgres_url() else "sqlite",
        help=f"PostgreSQL is at {POSTGRES_URL_VARIABLE} (default {DEFAULT_POSTGRES_URL}); default: both when it is set",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy samples of outbound and auth (concurrent phase) here",
    )
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    _print_table(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
