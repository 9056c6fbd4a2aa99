"""Benchmark: normalized messages per second on one core, over a realistic mix and over hostile bombs, and the
CPU time and peak memory of each worst case the limits allow.

Run with `python -m tools.bench_normalize [--seconds N] [--no-worst-cases]`; prints one line per mix and writes
var/bench/normalize.json. Each worst case runs in a process of its own, so its peak RSS (VmHWM) over the
process's baseline is that message's alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.ingest.domain.mime import normalize_message
from tests.fixtures import mime_samples


def _bombs() -> list[bytes]:
    deep = [b'Subject: deep\r\nContent-Type: multipart/mixed; boundary="b0"\r\n\r\n']
    deep += [
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i) for i in range(1, 2000)
    ]
    return [
        b"".join(deep),
        b"Subject: " + b" ".join([b"=?utf-8?q?a?="] * 20_000) + b"\r\n\r\nbody",
        b"To: " + b", ".join(b"a%d@b.c" % i for i in range(8000)) + b"\r\n\r\nbody",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 50_000 + b"--b--\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"\r\nbody",
        b"Subject: lines\r\n\r\n" + b"\r\n" * 5_000_000,
        b'To: "' + b'\\"' * 8000 + b"@x.io\r\nCc: " + b"a@b.c, " * 2000 + b"\r\n\r\nbody",
    ]


def _nested(depth: int, lines: int) -> bytes:
    head = [b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n']
    head += [
        b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i)
        for i in range(1, depth)
    ]
    return b"".join(head) + b"--x\r\n" * lines


def _attachment(megabytes: int) -> bytes:
    encoded = base64.encodebytes(os.urandom(megabytes * 1024 * 1024 * 3 // 4)).replace(b"\n", b"\r\n")
    return (
        b'Subject: big\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        b"\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\n' + encoded + b"--b--\r\n"
    )


# The costliest message of each class the limits leave (names are what docs/ingest-mime-and-drops.md lists).
WORST_CASES: dict[str, Callable[[], bytes]] = {
    "2.4 MB of empty header fields": lambda: b"Subject: s\r\n" + b"X:\r\n" * 600_000 + b"\r\nbody",
    "20 MB of empty lines": lambda: b"Subject: s\r\n\r\n" + b"\r\n" * 10_000_000,
    "50 MB message (the size cap)": lambda: b"Subject: s\r\n\r\n" + (b"x" * 998 + b"\r\n") * 52_500,
    "25 MB base64 attachment": lambda: _attachment(25),
    "49-deep multiparts with 600,000 lines": lambda: _nested(49, 600_000),
    "forward of 600,000 short lines": lambda: (
        b"Subject: f\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n" + b"a\r\n" * 600_000
    ),
    "500 parts": lambda: b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 50_000,
    "4,096 encoded words, unknown charsets": lambda: (
        b"Subject: " + b" ".join(b"=?x-%d?q?caf=E9?=" % i for i in range(4096)) + b"\r\n\r\nbody"
    ),
    "1,000 addresses with encoded names": lambda: (
        b"To: " + b", ".join(b"=?utf-8?q?x:a@b;?= <a%d@b.test>" % i for i in range(1000)) + b"\r\n\r\nbody"
    ),
}


def worst_case_in_this_process(name: str) -> dict[str, float]:
    """CPU seconds and peak RSS over the baseline for normalizing one worst case (run in a fresh process)."""
    raw = WORST_CASES[name]()
    # Building the message left a high-water mark of its own: start the peak again from the current RSS.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _vm_hwm()
    started = time.process_time()
    normalize_message(raw)
    return {
        "bytes": len(raw),
        "cpu_seconds": round(time.process_time() - started, 3),
        "peak_rss_mb_over_baseline": round((_vm_hwm() - baseline) / 2**20, 1),
    }


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def worst_cases() -> dict[str, dict[str, float]]:
    results = {}
    for name in WORST_CASES:
        done = subprocess.run(
            [sys.executable, "-m", "tools.bench_normalize", "--one-worst-case", name],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def measure(messages: list[bytes], seconds: float) -> dict[str, float]:
    """Normalize the messages round-robin for about `seconds` of process CPU time."""
    count = 0
    slowest = 0.0
    started = time.process_time()
    while time.process_time() - started < seconds:
        for raw in messages:
            one = time.process_time()
            normalize_message(raw)
            slowest = max(slowest, time.process_time() - one)
            count += 1
    elapsed = time.process_time() - started
    return {
        "messages": count,
        "cpu_seconds": round(elapsed, 3),
        "per_second_per_core": round(count / elapsed, 1),
        "slowest_ms": round(slowest * 1000, 2),
        "mean_bytes": round(sum(map(len, messages)) / len(messages)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-worst-cases", action="store_true", help="skip the per-message worst cases")
    parser.add_argument("--one-worst-case", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one_worst_case:
        print(json.dumps(worst_case_in_this_process(arguments.one_worst_case)))
        return
    results: dict[str, object] = {
        "realistic_mix": measure(mime_samples.realistic_mix(), arguments.seconds),
        "hostile_bombs": measure(_bombs(), arguments.seconds),
    }
    if not arguments.no_worst_cases:
        results["worst_cases"] = worst_cases()
    for name, figures in results.items():
        print(name, json.dumps(figures))
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "normalize.json").write_text(json.dumps(results, indent=2) + "\n")
    # The `make bench` convention: the figures as one JSON object, last on stdout.
    print(json.dumps(results))


if __name__ == "__main__":
    main()
