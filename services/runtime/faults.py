"""Fault injection for crash tests: `fault_point(name)` SIGKILLs the process at exactly that point when asked to.

MAILSYNC_FAULTS is a comma-separated list of point names; a name with the suffix `:once` fires only the first time
across restarts (a marker file in MAILSYNC_FAULTS_STATE_DIR remembers it), so a restarted process proceeds past
the point. Unset, every point is a no-op costing one environment lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULTS_VARIABLE = "MAILSYNC_FAULTS"
STATE_DIR_VARIABLE = "MAILSYNC_FAULTS_STATE_DIR"

# The points the shared runtime offers (services may add their own names).
CONSUMER_AFTER_HANDLER = "consumer.after_handler"
OUTBOX_AFTER_COMMIT = "outbox.after_commit"
OUTBOX_AFTER_PUBLISH = "outbox.after_publish"


class FaultConfigError(ValueError):
    """MAILSYNC_FAULTS asks for something that cannot be done."""


def armed_mode(name: str, spec: str | None) -> str | None:
    """How the point `name` is armed by the MAILSYNC_FAULTS value: "always", "once" or None."""
    if not spec:
        return None
    for item in spec.split(","):
        point, _, mode = item.strip().partition(":")
        if point != name:
            continue
        if mode in ("", "always"):
            return "always"
        if mode == "once":
            return "once"
        raise FaultConfigError(
            f"{FAULTS_VARIABLE}: unknown mode {mode!r} for {point!r} (use {point} or {point}:once)"
        )
    return None


def fault_point(name: str) -> None:
    """Kills this process with SIGKILL if MAILSYNC_FAULTS arms `name` (no cleanup, no flush: a real crash)."""
    mode = armed_mode(name, os.environ.get(FAULTS_VARIABLE))
    if mode is None:
        return
    if mode == "once":
        state_dir = os.environ.get(STATE_DIR_VARIABLE)
        if not state_dir:
            raise FaultConfigError(
                f"{FAULTS_VARIABLE}: {name}:once needs {STATE_DIR_VARIABLE} for its marker file"
            )
        marker = Path(state_dir) / f"{name}.fired"
        try:
            # O_EXCL: of several processes racing to the point, exactly one fires.
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.fsync(fd)
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
