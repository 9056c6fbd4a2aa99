"""The `make bench` harness runs real benchmark scripts as processes: a finished one gives its JSON figures, one
over its budget is stopped with everything it started, and every run lands in one JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools.bench import Benchmark, main, run_one, running_in_group, stop_group

SLEEPER_WITH_CHILD = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('started', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_benchmark_within_its_budget_reports_its_figures() -> None:
    benchmark = Benchmark("normalize", "tools.bench_normalize", ("--seconds", "0.2"))

    outcome = run_one(benchmark, budget=120, extra=[])

    assert outcome.status == "ok" and outcome.exit_code == 0
    assert set(outcome.result) == {"realistic_mix", "hostile_bombs", "worst_cases"}
    assert outcome.result["realistic_mix"]["messages"] > 0


def test_a_benchmark_over_its_budget_is_stopped_with_the_processes_it_started() -> None:
    # bench_sandbox starts the sandbox as a child process; the whole group must go.
    benchmark = Benchmark("sandbox", "tools.bench_sandbox", ("--messages", "100000"))

    outcome = run_one(benchmark, budget=3, extra=[])

    assert outcome.status == "timeout" and outcome.result is None
    assert outcome.exit_code is not None


def test_stopping_a_benchmark_ends_its_whole_process_group() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SLEEPER_WITH_CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline() == "started\n"
    # Parent and child both run: the check below can fail.
    assert len(running_in_group(process.pid)) == 2

    stop_group(process)

    assert running_in_group(process.pid) == []


def test_main_writes_every_outcome_to_a_timestamped_json_file(tmp_path: Path) -> None:
    code = main(["normalize", "--arg", "normalize=--seconds 0.2", "--out", str(tmp_path)])

    assert code == 0
    (written,) = tmp_path.glob("*.json")
    report = json.loads(written.read_text())
    assert report["benchmarks"]["normalize"]["status"] == "ok"
    assert report["benchmarks"]["normalize"]["arguments"] == ["--seconds", "0.2"]
    assert report["machine"]["cpus"] == os.cpu_count()


def test_main_refuses_an_unknown_benchmark_name(tmp_path: Path) -> None:
    assert main(["no-such-bench", "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []
