"""Normalization of fetched Gmail messages kept off the event loop: large messages are parsed in a bounded pool of
worker processes, small ones inline (parsing a few kilobytes costs less than handing it to another process).

A burst of heavy mail then slows its mailbox (each message waits for a free worker) but never stalls the process:
the event loop keeps answering health checks, gRPC calls and JetStream acks while the workers parse. The workers
are started on first use, with `spawn` (never fork a process that runs gRPC and asyncio threads), and replaced
after a number of messages so whatever a hostile message left behind in a worker's memory goes with it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from services.ingest.domain.message import MailboxCopy, NormalizedMail
from services.ingest.domain.mime import normalize_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalizerConfig:
    # Worker processes for large messages; 0 parses everything on the event loop (a test or a tiny deployment).
    processes: int = 2
    # A message whose raw (base64url) form is at most this long is parsed inline.
    inline_max_chars: int = 256 * 1024
    # A worker process is replaced after this many messages.
    max_messages_per_process: int = 200


def normalize_gmail_raw(raw: str, copy: MailboxCopy) -> NormalizedMail:
    """Decodes Gmail's `raw` (base64url, padding optional) and normalizes it; runs in a worker or inline."""
    return normalize_message(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), copy=copy)


class MessageNormalizer:
    """`normalize` parses one message; at most `processes` large ones are in the workers at once, the others
    wait here (not in the pool's own queue, which would hold every waiting message's bytes twice)."""

    def __init__(self, config: NormalizerConfig | None = None) -> None:
        self._config = config or NormalizerConfig()
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(max(1, self._config.processes))

    async def normalize(self, raw: str, copy: MailboxCopy) -> NormalizedMail:
        if self._config.processes <= 0 or len(raw) <= self._config.inline_max_chars:
            return normalize_gmail_raw(raw, copy)
        async with self._slots:
            pool = self._running_pool()
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, normalize_gmail_raw, raw, copy)
            except BrokenProcessPool:
                # A worker died (killed, out of memory): the next message gets a fresh pool; this pass fails
                # and is retried from its cursor like any other failure.
                log.error("a normalization worker died; starting new ones")
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
                raise

    async def close(self) -> None:
        """Stops the workers (what they were parsing is abandoned; its pass is retried after a restart)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def _running_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._config.processes,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self._config.max_messages_per_process,
            )
        return self._pool
