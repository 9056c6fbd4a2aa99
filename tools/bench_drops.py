"""Benchmark: the ingest process's memory and responsiveness while BCC drops arrive over SMTP.

Starts nats-server, auth and ingest as `make run` does (tools.run), makes a user of one location, and sends
`--concurrent` drops of `--megabytes` each at once through the drop listener (each accepted: a trusted MX's
DMARC pass; `--shape empty-lines` sends empty lines instead of an attachment). Samples ingest's RSS (/proc) and the round trip of its gRPC health check meanwhile; reports the idle
RSS, the peak, and the slowest health answer. Run `python -m tools.bench_drops [--concurrent 4] [--megabytes 24]`;
prints one JSON object (last on stdout) and writes var/bench/drops.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import json
import smtplib
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mailsync.v1 import auth_pb2, auth_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tools.run import Stack

TRUSTED_MX = "mx.bench.test"
USER_ADDRESS = "bench.user@crm.test"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def empty_lines_drop(total_bytes: int, index: int) -> bytes:
    """A drop of about `total_bytes` of empty lines (ten million for 20 MB): the costliest shape per byte."""
    head = (
        f"Authentication-Results: {TRUSTED_MX}; dmarc=pass header.from=crm.test\r\n"
        f"From: Bench User <{USER_ADDRESS}>\r\nTo: Customer <customer@client.test>\r\n"
        f"Subject: Empty lines {index}\r\nDate: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: <bench-{uuid.uuid4().hex}@crm.test>\r\n\r\n"
    ).encode()
    return head + b"\r\n" * (total_bytes // 2)


def drop_message(total_bytes: int, index: int) -> bytes:
    """A drop of about `total_bytes`: a short text and one attachment, base64 as mail clients send it."""
    attachment = (uuid.uuid4().bytes * (total_bytes * 3 // 4 // 16 + 1))[: total_bytes * 3 // 4 - 4096]
    encoded = base64.encodebytes(attachment)
    head = (
        f"Authentication-Results: {TRUSTED_MX}; dmarc=pass header.from=crm.test\r\n"
        f"From: Bench User <{USER_ADDRESS}>\r\nTo: Customer <customer@client.test>\r\n"
        f"Subject: Large proposal {index}\r\nDate: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: <bench-{uuid.uuid4().hex}@crm.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
        "The proposal is attached.\r\n--b\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="proposal.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    ).encode()
    return head + encoded.replace(b"\n", b"\r\n") + b"--b--\r\n"


def send(port: int, recipient: str, raw: bytes) -> str:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as client:
            client.sendmail(USER_ADDRESS, [recipient], raw)
        return "250"
    except smtplib.SMTPException as error:
        return f"refused: {error}"


class Sampler(threading.Thread):
    """RSS of the ingest process and the round trip of its health check, every `interval` seconds."""

    def __init__(self, pid: int, address: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.channel = grpc.insecure_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.peak_rss = 0
        self.slowest_health = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
            started = time.monotonic()
            try:
                self.health.Check(health_pb2.HealthCheckRequest(), timeout=60)
            except grpc.RpcError:
                pass
            self.slowest_health = max(self.slowest_health, time.monotonic() - started)
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.channel.close()


def measure(
    concurrent: int,
    megabytes: float,
    var_dir: Path,
    settings: dict[str, str] | None = None,
    shape: str = "attachment",
) -> dict[str, object]:
    runner = Stack(var_dir=var_dir, free_ports=True)
    runner.plan()
    runner.processes = [m for m in runner.processes if m.name in ("nats", "auth", "ingest")]
    for managed in runner.processes[1:]:
        managed.env.update(
            {
                "MAILSYNC_INGEST_BCC_TRUSTED_AUTHSERV_IDS": TRUSTED_MX,
                "MAILSYNC_INGEST_BCC_VERIFY_DKIM": "false",
            }
        )
        managed.env.update(settings or {})
    runner.start()
    try:
        runner.wait_until_healthy(120)
        services = {m.name: m for m in runner.processes}
        ingest = services["ingest"]
        token = runner.crm_token()
        metadata = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(services["auth"].address) as channel:
            auth_pb2_grpc.AuthServiceStub(channel).UpsertUser(
                auth_pb2.UpsertUserRequest(
                    request_id=uuid.uuid4().hex,
                    user=auth_pb2.User(
                        user_id="bench-user", crm_email=USER_ADDRESS, location_ids=["loc-bench"], version=1
                    ),
                ),
                metadata=metadata,
            )
        with grpc.insecure_channel(ingest.address) as channel:
            recipient = (
                ingest_pb2_grpc.IngestServiceStub(channel)
                .GetBccAddress(ingest_pb2.GetBccAddressRequest(location_id="loc-bench"), metadata=metadata)
                .address
            )
        port = int(ingest.env["MAILSYNC_INGEST_BCC_SMTP_PORT"])
        warm = send(port, recipient, drop_message(64 * 1024, 0))
        time.sleep(2)
        idle = rss_bytes(ingest.pid)
        build = empty_lines_drop if shape == "empty-lines" else drop_message
        drops = [build(int(megabytes * 1024 * 1024), index) for index in range(1, concurrent + 1)]
        sampler = Sampler(ingest.pid, ingest.address)
        sampler.start()
        started = time.monotonic()
        with ThreadPoolExecutor(concurrent) as pool:
            answers = list(pool.map(lambda raw: send(port, recipient, raw), drops))
        elapsed = time.monotonic() - started
        time.sleep(1)
        sampler.stop()
        return {
            "shape": shape,
            "concurrent_drops": concurrent,
            "drop_bytes": len(drops[0]),
            "warm_up_answer": warm,
            "answers": answers,
            "seconds": round(elapsed, 2),
            "idle_rss_mb": round(idle / 2**20, 1),
            "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
            "rss_after_mb": round(rss_bytes(ingest.pid) / 2**20, 1),
            "slowest_health_check_s": round(sampler.slowest_health, 3),
        }
    finally:
        runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--megabytes", type=float, default=24.0)
    parser.add_argument(
        "--shape", choices=("attachment", "empty-lines"), default="attachment", help="what each drop holds"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an ingest setting for the run, e.g. MAILSYNC_INGEST_BCC_MAX_CONCURRENT_DROPS=1 (repeatable)",
    )
    arguments = parser.parse_args()
    settings = dict(item.split("=", 1) for item in arguments.setting)
    with tempfile.TemporaryDirectory(prefix="bench-drops-") as var_dir:
        results = measure(arguments.concurrent, arguments.megabytes, Path(var_dir), settings, arguments.shape)
    results["settings"] = settings
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "drops.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
