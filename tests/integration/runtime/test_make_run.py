"""`python -m tools.run --check` (what `make run` starts) brings up NATS, the sandbox and the four services,
all healthy by the gRPC health protocol (HTTP /healthz for the sandbox), and then stops every process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tools.run import ROOT, SERVICES


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.slow
def test_make_run_check_brings_everything_up_healthy_and_stops_it(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    result = subprocess.run(
        [sys.executable, "-m", "tools.run", "--check", "--var-dir", str(tmp_path), "--timeout", "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:] if line.strip()}
    expected = ["nats", *SERVICES]
    if (ROOT / "sandbox" / "__main__.py").exists():
        expected.append("sandbox")
    for name in expected:
        assert rows[name][3] == "SERVING", result.stdout
    assert "CRM token" in result.stdout
    assert (tmp_path / "dev-token-keys").exists()
    for name in expected:
        assert not process_alive(int(rows[name][1])), f"{name} still running after --check"


def start_runner(var_dir: Path, *, ignore_sigint: bool = False) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}

    def as_a_script_would() -> None:
        # A shell without job control starts background jobs with SIGINT ignored; the child inherits that.
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    log = (var_dir / "runner.log").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tools.run", "--free-ports", "--var-dir", str(var_dir)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=as_a_script_would,
        )
    finally:
        log.close()


def wait_for_stack(runner: subprocess.Popen[bytes], var_dir: Path) -> dict[str, Any]:
    stack_file = var_dir / "run" / "stack.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not stack_file.exists():
        if runner.poll() is not None or time.monotonic() > deadline:
            stop(runner)
            pytest.fail(f"no stack file: {(var_dir / 'runner.log').read_text()}", pytrace=False)
        time.sleep(0.2)
    return dict(json.loads(stack_file.read_text()))


def stop(runner: subprocess.Popen[bytes]) -> None:
    if runner.poll() is None:
        runner.terminate()
        try:
            runner.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait(timeout=10)


def all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not any(process_alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


STARTUP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 90.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "ignore_sigint"),
    [(signal.SIGHUP, False), (signal.SIGINT, True)],
    ids=["SIGHUP (terminal closed)", "SIGINT (started from a script, SIGINT ignored)"],
)
def test_the_runner_stops_everything_on_a_signal_and_its_stack_file_lists_every_address(
    tmp_path: Path, signum: signal.Signals, ignore_sigint: bool
) -> None:
    runner = start_runner(tmp_path, ignore_sigint=ignore_sigint)
    try:
        stack = wait_for_stack(runner, tmp_path)
        assert set(stack["pids"]) >= {"nats", *SERVICES}
        assert stack["endpoints"]["auth"]["oauth_callback"].endswith("/oauth/callback")
        assert stack["endpoints"]["ingest"]["push"].endswith("/gmail/push")
        host, _, port = stack["endpoints"]["ingest"]["bcc_smtp"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as smtp:
            assert smtp.recv(3) == b"220"  # the BCC-drop listener greets
        assert stack["nats_url"].startswith("nats://") and stack["bcc_trusted_authserv_id"]
        table = (tmp_path / "runner.log").read_text()
        for address in (
            stack["endpoints"]["ingest"]["bcc_smtp"],
            stack["endpoints"]["auth"]["oauth_callback"],
        ):
            assert address in table

        runner.send_signal(signum)
        assert runner.wait(timeout=STOP_TIMEOUT_SECONDS) == 0
    finally:
        stop(runner)
    assert all_gone(list(stack["pids"].values())), "a child outlived the runner"
    assert not (tmp_path / "run" / "stack.json").exists()


@pytest.mark.slow
def test_children_die_with_a_runner_killed_outright(tmp_path: Path) -> None:
    runner = start_runner(tmp_path)
    try:
        stack = wait_for_stack(runner, tmp_path)
        runner.kill()  # no handler runs: only the parent-death signal can stop the children
        runner.wait(timeout=10)
    finally:
        stop(runner)
    assert all_gone(list(stack["pids"].values())), "children kept running after the runner was killed"
