"""`python -m tools.run --check` (what `make run` starts) brings up NATS, the sandbox and the four services,
all healthy by the gRPC health protocol (HTTP /healthz for the sandbox), and then stops every process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
