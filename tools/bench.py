"""`make bench`: runs every benchmark script tools/bench_*.py one after another, each as its own process within a
time budget, prints what each reports, and writes all results to var/bench/<timestamp>.json.

The convention a benchmark follows (docs/benchmarks.md): it runs as `python -m tools.bench_<name>`, finishes
within the budget with its default arguments (or the ones in a module-level `BENCH_ARGS = [...]` list), and
prints its figures as one JSON object as the last thing on stdout (one line, or an indented document).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_SECONDS = 300.0
OUTPUT_TAIL_LINES = 20
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Benchmark:
    """One tools/bench_<name>.py script."""

    name: str
    module: str
    arguments: tuple[str, ...]


@dataclass
class Outcome:
    """What one benchmark run gave: `status` is ok, failed (non-zero exit), timeout or no-result."""

    status: str
    seconds: float
    exit_code: int | None
    arguments: list[str]
    result: Any
    output_tail: str


def declared_arguments(path: Path) -> tuple[str, ...]:
    """The module's `BENCH_ARGS` list, read without importing it (imports may be heavy or start things)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "BENCH_ARGS" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{path}: BENCH_ARGS must be a list of strings")
            return tuple(value)
    return ()


def discover(tools_dir: Path = ROOT / "tools") -> list[Benchmark]:
    return [
        Benchmark(path.stem.removeprefix("bench_"), f"tools.{path.stem}", declared_arguments(path))
        for path in sorted(tools_dir.glob("bench_*.py"))
    ]


def last_json_object(text: str) -> Any:
    """The JSON object the output ends with: its last line, or an indented document starting at a line '{'."""
    lines = text.rstrip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if not lines[start].lstrip().startswith("{"):
            continue
        try:
            value = json.loads("\n".join(lines[start:]))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stops the benchmark and whatever it started (servers, workers): they share its process group. Returns once
    none of them runs: the benchmark itself may end before a child it started has (seen on a loaded machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None and not running_in_group(process.pid):
                return
            time.sleep(0.05)


def running_in_group(group: int) -> list[int]:
    """The processes of a process group that still run (an exited child nobody reaped yet, a zombie, does not)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            members.append(int(stat.parent.name))
    return members


def run_one(benchmark: Benchmark, budget: float, extra: list[str]) -> Outcome:
    arguments = [*benchmark.arguments, *extra]
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", benchmark.module, *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=budget)
        timed_out = False
    except subprocess.TimeoutExpired:
        stop_group(process)
        output, _ = process.communicate()
        timed_out = True
    seconds = round(time.monotonic() - started, 2)
    result = last_json_object(output or "")
    if timed_out:
        status = "timeout"
    elif process.returncode != 0:
        status = "failed"
    elif result is None:
        status = "no-result"
    else:
        status = "ok"
    tail = "\n".join((output or "").rstrip().splitlines()[-OUTPUT_TAIL_LINES:])
    return Outcome(status, seconds, process.returncode, arguments, result, tail)


def git_commit() -> str:
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return answer.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only these benchmarks (e.g. sandbox threading)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS, help="seconds each may take")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their arguments")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench", help="where the JSON goes")
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='extra arguments for one benchmark, e.g. --arg "threading=--messages 200" (repeatable)',
    )
    args = parser.parse_args(argv)
    benchmarks = discover()
    if args.list:
        for benchmark in benchmarks:
            print(
                f"{benchmark.name:12} python -m {benchmark.module} {' '.join(benchmark.arguments)}".rstrip()
            )
        return 0
    unknown = set(args.names) - {b.name for b in benchmarks}
    if unknown:
        print(f"tools.bench: no benchmark named {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
        return 2
    extra: dict[str, list[str]] = {}
    for item in args.arg:
        name, _, rest = item.partition("=")
        extra.setdefault(name, []).extend(rest.split())
    chosen = [b for b in benchmarks if not args.names or b.name in args.names]
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "budget_seconds": args.budget,
        "benchmarks": {},
    }
    for benchmark in chosen:
        print(f"== {benchmark.name}: python -m {benchmark.module} (budget {args.budget:g} s)", flush=True)
        outcome = run_one(benchmark, args.budget, extra.get(benchmark.name, []))
        report["benchmarks"][benchmark.name] = asdict(outcome)
        print(outcome.output_tail)
        print(f"-- {benchmark.name}: {outcome.status} in {outcome.seconds:g} s\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    statuses = {name: outcome["status"] for name, outcome in report["benchmarks"].items()}
    print(f"results: {path}  " + "  ".join(f"{name}={status}" for name, status in statuses.items()))
    return 0 if all(status == "ok" for status in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
