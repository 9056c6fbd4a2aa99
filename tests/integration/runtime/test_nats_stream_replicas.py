"""Stream replicas are a setting: a start raises a stream's replica count and never lowers it (a real three-node
nats-server cluster on loopback; a single server for the local default)."""

from __future__ import annotations

import logging
from typing import Any

import nats
import pytest

from services.runtime.streams import MESSAGES, REPLICAS_VARIABLE, declare_stream

pytestmark = pytest.mark.timeout(240)


async def replicas_of(js: Any, name: str) -> int:
    info = await js.stream_info(name)
    return int(info.config.num_replicas or 1)


async def test_a_start_raises_replicas_and_a_lower_setting_keeps_the_streams_count(
    nats_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await nats.connect(servers=nats_cluster.urls, connect_timeout=5)
    try:
        js = client.jetstream()
        await declare_stream(js, MESSAGES, replicas=1)
        assert await replicas_of(js, MESSAGES.name) == 1

        await declare_stream(js, MESSAGES, replicas=3)
        assert await replicas_of(js, MESSAGES.name) == 3

        # A service started with the local default (1) keeps the cluster's three copies, and says so.
        with caplog.at_level(logging.WARNING, logger="services.runtime.streams"):
            await declare_stream(js, MESSAGES, replicas=1)
        assert await replicas_of(js, MESSAGES.name) == 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].__dict__["setting"] == REPLICAS_VARIABLE
        assert warnings[0].__dict__["replicas"] == 3

        # Negative control: the server itself accepts the lower count, so only the declaration's rule kept it.
        await js.update_stream(MESSAGES.config(1))
        assert await replicas_of(js, MESSAGES.name) == 1
    finally:
        await client.close()


async def test_a_single_server_gets_the_local_default_of_one_replica(nats_server: Any) -> None:
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        await declare_stream(js, MESSAGES)
        assert await replicas_of(js, MESSAGES.name) == 1
        # Three replicas cannot be placed on one server: the declaration fails instead of pretending.
        with pytest.raises(Exception, match=r"(?i)replicas|resources|peers"):
            await declare_stream(js, MESSAGES, replicas=3)
    finally:
        await client.close()
