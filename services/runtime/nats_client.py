"""Connecting to NATS with reconnects; the JetStream layer builds on the client this returns.

A NATS outage is an expected event the client rides out by reconnecting every half second: it is logged once at
WARNING when the connection is lost and once when it is back, with how many attempts failed in between, instead of
nats-py's default of an ERROR with a traceback per failed attempt (which pages on-call for a blip).
"""

from __future__ import annotations

import logging
import time

import nats
import nats.errors
from nats.aio.client import Client

_STARTUP_ATTEMPTS = 3
# What a lost connection raises into the error callback (as opposed to a protocol or permission error).
_CONNECTION_ERRORS = (
    OSError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
)

log = logging.getLogger(__name__)


class NatsUnavailable(RuntimeError):
    """NATS could not be reached at startup."""


class ConnectionEvents:
    """The client's callbacks: counts the errors of a reconnect loop and logs the loop's start and end once each."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lost_at: float | None = None
        self.failed_attempts = 0
        self.last_error = ""

    async def on_error(self, error: Exception) -> None:
        self.last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self._lost_at is not None:
            self.failed_attempts += 1
        elif not isinstance(error, _CONNECTION_ERRORS):
            # A protocol or permission error on a working connection: not part of a reconnect loop.
            log.warning("NATS client error", extra={"nats_url": self._url, "error": self.last_error})
        # A connection error on a working connection is the loss itself: `on_disconnected` reports it.

    async def on_disconnected(self) -> None:
        if self._lost_at is not None:
            return
        self._lost_at = time.monotonic()
        self.failed_attempts = 0
        log.warning(
            "NATS connection lost; reconnecting", extra={"nats_url": self._url, "error": self.last_error}
        )

    async def on_reconnected(self) -> None:
        if self._lost_at is None:
            return
        log.warning(
            "NATS connection back",
            extra={
                "nats_url": self._url,
                "failed_attempts": self.failed_attempts,
                "outage_seconds": round(time.monotonic() - self._lost_at, 1),
                "last_error": self.last_error,
            },
        )
        self._lost_at = None
        self.failed_attempts = 0


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """Connects (failing fast at startup with a clear error) and then reconnects forever."""
    events = ConnectionEvents(url)
    try:
        client = await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            # nats-py applies this limit to the first connection too, where -1 would retry forever; so start
            # bounded and lift the limit once connected.
            max_reconnect_attempts=_STARTUP_ATTEMPTS,
            reconnect_time_wait=0.5,
            error_cb=events.on_error,
            disconnected_cb=events.on_disconnected,
            reconnected_cb=events.on_reconnected,
        )
    except Exception as exc:
        raise NatsUnavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    client.options["max_reconnect_attempts"] = -1
    return client
