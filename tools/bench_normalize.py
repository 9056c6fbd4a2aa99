"""Benchmark: normalized messages per second on one core, over a realistic mix and over hostile bombs.

Run with `python -m tools.bench_normalize [--seconds N]`; prints one line per mix and writes
var/bench/normalize.json.
"""

from __future__ import annotations

import argparse
import json
import time
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
    arguments = parser.parse_args()
    results = {
        "realistic_mix": measure(mime_samples.realistic_mix(), arguments.seconds),
        "hostile_bombs": measure(_bombs(), arguments.seconds),
    }
    for name, figures in results.items():
        print(name, json.dumps(figures))
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "normalize.json").write_text(json.dumps(results, indent=2) + "\n")
    # The `make bench` convention: the figures as one JSON object, last on stdout.
    print(json.dumps(results))


if __name__ == "__main__":
    main()
