"""Connecting to NATS with reconnects; the JetStream layer builds on the client this returns."""

from __future__ import annotations

import nats
from nats.aio.client import Client

_STARTUP_ATTEMPTS = 3


class NatsUnavailable(RuntimeError):
    """NATS could not be reached at startup."""


async def connect(url: str, *, name: str, connect_timeout: float = 5.0) -> Client:
    """Connects (failing fast at startup with a clear error) and then reconnects forever."""
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
        )
    except Exception as exc:
        raise NatsUnavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    client.options["max_reconnect_attempts"] = -1
    return client
