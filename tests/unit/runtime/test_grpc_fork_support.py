"""gRPC's fork handlers are off in every mailsync process (services/__init__.py says why): set before grpc is
first imported, and a value given from outside is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROBE = "import {module}, os; print(os.environ.get('GRPC_ENABLE_FORK_SUPPORT'))"


def _fork_support_seen_by(module: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"} | extra
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_a_service_and_a_tool_turn_grpc_fork_support_off_before_grpc_is_imported() -> None:
    assert _fork_support_seen_by("services.ingest.app") == "false"
    assert _fork_support_seen_by("tools.run") == "false"


def test_a_value_given_from_outside_is_kept() -> None:
    assert _fork_support_seen_by("services.ingest.app", GRPC_ENABLE_FORK_SUPPORT="true") == "true"
