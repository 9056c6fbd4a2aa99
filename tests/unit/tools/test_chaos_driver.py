"""The chaos driver stops a case at once when a process of the stack exited that it did not kill (instead of
waiting minutes for mail that can no longer sync), naming the process, how it ended and the end of its log; a
process it is restarting itself is not such an exit."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tools.chaos import Killer, ProcessExited, exit_description
from tools.run import Managed, Stack


def _stack_with_exited_process(tmp_path: Path, status: int) -> Stack:
    log = tmp_path / "ingest.log"
    managed = Managed(
        "ingest", [sys.executable, "-c", f"print('last words'); raise SystemExit({status})"], "", log
    )
    managed.start()
    assert managed.process is not None
    managed.process.wait(timeout=30)
    return Stack(var_dir=tmp_path, free_ports=True, processes=[managed])


def test_a_process_that_exited_on_its_own_stops_the_case_with_its_name_status_and_log(tmp_path: Path) -> None:
    killer = Killer(_stack_with_exited_process(tmp_path, 1), log=lambda _line: None)
    with pytest.raises(ProcessExited) as raised:
        killer.check_processes()
    message = str(raised.value)
    assert message.startswith("ingest exited with status 1, and the chaos driver did not kill it")
    assert "last words" in message


def test_a_process_the_killer_is_restarting_is_not_reported(tmp_path: Path) -> None:
    killer = Killer(_stack_with_exited_process(tmp_path, 0), log=lambda _line: None)
    killer.restarting.add("ingest")
    killer.check_processes()


def test_a_process_a_signal_ended_is_described_by_the_signal() -> None:
    assert exit_description(-signal.SIGTERM) == "was stopped by SIGTERM (status -15)"
    assert exit_description(2) == "exited with status 2"


def test_running_processes_pass(tmp_path: Path) -> None:
    managed = Managed(
        "sandbox", [sys.executable, "-c", "import time; time.sleep(60)"], "", tmp_path / "s.log"
    )
    managed.start()
    try:
        Killer(
            Stack(var_dir=tmp_path, free_ports=True, processes=[managed]), log=lambda _l: None
        ).check_processes()
    finally:
        assert managed.process is not None
        managed.process.kill()
        managed.process.wait(timeout=30)
