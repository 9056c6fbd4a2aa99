"""A NATS outage is logged once when the connection is lost and once when it is back, with the failed attempts
counted, never as an ERROR with a traceback per reconnect attempt."""

from __future__ import annotations

import logging

import nats.errors
import pytest

from services.runtime.nats_client import ConnectionEvents


async def test_a_reconnect_loop_is_two_warnings_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    events = ConnectionEvents("nats://127.0.0.1:4999")
    caplog.set_level(logging.DEBUG, logger="services.runtime.nats_client")

    # The loss itself reaches the error callback first; it is reported by the one "lost" line.
    await events.on_error(nats.errors.UnexpectedEOF())
    await events.on_disconnected()
    for _ in range(40):
        await events.on_error(ConnectionRefusedError("connect call failed"))
        await events.on_disconnected()
    await events.on_reconnected()

    records = [r for r in caplog.records if r.name == "services.runtime.nats_client"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "NATS connection lost; reconnecting"),
        ("WARNING", "NATS connection back"),
    ]
    assert records[1].failed_attempts == 40  # type: ignore[attr-defined]
    assert "connect call failed" in records[1].last_error  # type: ignore[attr-defined]
    assert not any(r.exc_info for r in records)


async def test_an_error_while_connected_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    events = ConnectionEvents("nats://127.0.0.1:4999")
    caplog.set_level(logging.DEBUG, logger="services.runtime.nats_client")
    await events.on_error(nats.errors.Error("permissions violation"))
    [record] = [r for r in caplog.records if r.name == "services.runtime.nats_client"]
    assert record.levelname == "WARNING" and "permissions violation" in record.error  # type: ignore[attr-defined]
