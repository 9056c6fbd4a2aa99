"""Heavy mail benchmark: mails with a large attachment arriving together in one mailbox, through the real processes
as `make run` starts them (SQLite). Reports the seconds from delivery until threading shows the last one stored,
ingest's peak RSS (its own process and, separately, its normalization workers) and its CPU seconds, and the other
services' peak RSS: the figures the ingest pod's memory limit is set from (issue 16).

`python -m tools.bench_heavy_burst [--mails 25] [--megabytes 10]`; prints one JSON object last.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tools.bench_e2e import (
    Delivered,
    _children_of,
    _memory_kb,
    _rfc_key,
    _tree,
    ensure_seats,
    start_stack,
)

BENCH_ARGS = ["--mails", "25", "--megabytes", "10"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_heavy_burst", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mails", type=int, default=25, help="mails delivered at once")
    parser.add_argument("--megabytes", type=float, default=10.0, help="size of each mail's attachment")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the last one stored"
    )
    args = parser.parse_args(argv)
    # What start_stack reads: SQLite and the product's own defaults.
    args.send_limit = 0
    return args


def ingest_memory(pid: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of ingest's own process and the largest of its children (the normalization workers)."""
    members = _tree(pid, _children_of())
    children = [p for p in members if p != pid]
    return {
        "ingest_peak_rss_mb": round(_memory_kb(pid, "VmHWM") / 1024, 1),
        "worker_peak_rss_mb": round(max((_memory_kb(p, "VmHWM") for p in children), default=0) / 1024, 1),
        "workers_running": len(children),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    var_dir = Path(tempfile.mkdtemp(prefix="bench-heavy-"))
    running = start_stack("sqlite", var_dir, uuid.uuid4().hex[:8], args)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            ensure_seats(running, 1, pool)
        one = running.seats[0]
        ingest_pid = running.meter.pids["ingest"]
        cpu_before = running.meter.cpu()
        attachment = {
            "filename": "scan.bin",
            "content_type": "application/octet-stream",
            "data_base64": base64.b64encode(os.urandom(int(args.megabytes * 1024 * 1024))).decode(),
        }
        delivered = Delivered()
        started = time.monotonic()
        keys: set[str] = set()
        # Five at a time: the sandbox admin API answers within 30 s, which 25 large mails at once can exceed.
        for start in range(0, args.mails, 5):
            answer = running.crm.sandbox.deliver(
                one.address,
                sender=f"Contact {one.index} <{one.contact_email}>",
                to=[one.address],
                subject="Scans",
                body="The scans you asked for.",
                copies=min(5, args.mails - start),
                attachments=[attachment],
            )
            keys |= {_rfc_key(m) for m in answer.get("message_ids") or [answer["message_id"]]}
        for key in keys:
            delivered.at[key] = started
        running.watch.wait_for(keys, timeout=args.timeout)
        seconds = time.monotonic() - started
        cpu_after = running.meter.cpu()
        result: dict[str, Any] = {
            "mails": args.mails,
            "attachment_megabytes": args.megabytes,
            "seconds_delivery_to_last_stored": round(seconds, 1),
            "cpu_seconds": {
                name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in cpu_after
            },
            **ingest_memory(ingest_pid),
            "memory": running.meter.rss_mb(),
            "load_average": os.getloadavg()[0],
        }
    finally:
        running.watch.stop()
        running.crm.close()
        running.stack.stop()
        shutil.rmtree(var_dir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
