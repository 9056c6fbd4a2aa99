"""Fault points: parsing of MAILSYNC_FAULTS, and a real SIGKILL at an armed point (in a child process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.runtime.faults import FaultConfigError, armed_mode

PROGRAM = "from services.runtime.faults import fault_point; fault_point('p.one'); print('passed')"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("", None),
        ("p.other", None),
        ("p.one", "always"),
        ("p.other, p.one:once", "once"),
        ("p.one:always", "always"),
    ],
)
def test_armed_mode_reads_the_comma_separated_list(spec: str | None, expected: str | None) -> None:
    assert armed_mode("p.one", spec) == expected


def test_unknown_mode_is_a_configuration_error() -> None:
    with pytest.raises(FaultConfigError):
        armed_mode("p.one", "p.one:sometimes")


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILSYNC_FAULTS")}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_unarmed_point_is_a_no_op() -> None:
    result = _run({"MAILSYNC_FAULTS": "p.other"})
    assert result.returncode == 0 and result.stdout.strip() == "passed"


def test_armed_point_kills_the_process_every_time() -> None:
    for _ in range(2):
        assert _run({"MAILSYNC_FAULTS": "p.one"}).returncode == -signal.SIGKILL


def test_once_point_kills_the_first_run_only(tmp_path: Path) -> None:
    env = {"MAILSYNC_FAULTS": "p.one:once", "MAILSYNC_FAULTS_STATE_DIR": str(tmp_path)}
    assert _run(env).returncode == -signal.SIGKILL
    second = _run(env)
    assert second.returncode == 0 and second.stdout.strip() == "passed"
    assert (tmp_path / "p.one.fired").exists()
