"""python -m sandbox --host 127.0.0.1 --port 8765 [--state-file path]: run the Gmail sandbox until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from sandbox.app import serve
from sandbox.core import SandboxCore


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Gmail, Google OAuth and Pub/Sub push sandbox on loopback (see docs/sandbox.md).",
    )
    parser.add_argument("--host", default=os.environ.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8765")))
    parser.add_argument(
        "--state-file",
        type=Path,
        default=os.environ.get("SANDBOX_STATE_FILE") or None,
        help="JSON file that keeps mailboxes, grants and settings across restarts",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for ids and injected faults")
    return parser.parse_args()


async def _main(arguments: argparse.Namespace) -> None:
    core = SandboxCore.create(seed=arguments.seed)
    stop_server = await serve(core, arguments.host, arguments.port, arguments.state_file)
    logging.getLogger("sandbox").info("Gmail sandbox on http://%s:%d", arguments.host, arguments.port)
    print(f"Gmail sandbox listening on http://{arguments.host}:{arguments.port}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await stop_server()


def _run_profiled(arguments: argparse.Namespace, path: str) -> None:
    """SANDBOX_PROFILE=<file>: cProfile statistics of the whole run, written at shutdown (what costs CPU)."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(_main(arguments))
    finally:
        profiler.disable()
        profiler.dump_stats(path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    profile_path = os.environ.get("SANDBOX_PROFILE", "")
    if profile_path:
        _run_profiled(_arguments(), profile_path)
    else:
        asyncio.run(_main(_arguments()))
