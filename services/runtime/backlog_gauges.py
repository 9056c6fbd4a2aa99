"""Polled gauges of what is waiting: JetStream consumer pending and ack-pending per durable, the outbox backlog and
the age of its oldest event, dead letters not yet redriven, and the database connections in use.

A background task reads them on the metric export interval (OTEL_METRIC_EXPORT_INTERVAL, at least a second) and
the observable gauges report the last reading, because a gauge callback runs on the exporter's thread, where
neither the database nor NATS can be asked anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import func, select

from services.runtime.clock import Clock, SystemClock
from services.runtime.consumer import ConsumerSpec
from services.runtime.db import Database
from services.runtime.instruments import METER_NAME
from services.runtime.messaging_tables import dead_letters_table, outbox_table

log = logging.getLogger(__name__)

_DEFAULT_EXPORT_INTERVAL_MS = 60_000


def poll_interval_seconds() -> float:
    """The metric export interval, so every export carries a fresh reading (never faster than once a second)."""
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "")
    try:
        milliseconds = float(raw) if raw.strip() else _DEFAULT_EXPORT_INTERVAL_MS
    except ValueError:
        milliseconds = _DEFAULT_EXPORT_INTERVAL_MS
    return max(milliseconds / 1000, 1.0)


@dataclass
class BacklogReading:
    """The last values read; absent until the first poll succeeds."""

    consumer_pending: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    outbox_backlog: int | None = None
    outbox_oldest_age: float | None = None
    dead_letters_open: int | None = None


# The pollers of this process (one per service it runs; tests run several in one process).
_active: weakref.WeakSet[BacklogGauges] = weakref.WeakSet()


def _observe(read: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        observations: list[Observation] = []
        for poller in list(_active):
            observations.extend(getattr(poller, read)())
        return observations

    return callback


@functools.cache
def _register_gauges() -> None:
    meter = metrics.get_meter(METER_NAME)
    meter.create_observable_gauge(
        "messaging.nats.consumer.pending",
        callbacks=[_observe("pending_observations")],
        unit="{message}",
        description="Messages of the stream the durable consumer has not been delivered yet",
    )
    meter.create_observable_gauge(
        "messaging.nats.consumer.ack_pending",
        callbacks=[_observe("ack_pending_observations")],
        unit="{message}",
        description="Messages delivered to the durable consumer and not acknowledged yet",
    )
    meter.create_observable_gauge(
        "mailsync.outbox.backlog",
        callbacks=[_observe("outbox_backlog_observations")],
        unit="{event}",
        description="Events staged in the service's outbox and not yet published",
    )
    meter.create_observable_gauge(
        "mailsync.outbox.oldest_age",
        callbacks=[_observe("outbox_age_observations")],
        unit="s",
        description="Age of the oldest unpublished outbox event (0 when none waits)",
    )
    meter.create_observable_gauge(
        "mailsync.dead_letters.open",
        callbacks=[_observe("dead_letter_observations")],
        unit="{message}",
        description="Dead letters recorded and not redriven",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.count",
        callbacks=[_observe("pool_observations")],
        unit="{connection}",
        description="Database connections of the pool, by state (used, idle)",
    )


class BacklogGauges:
    """Reads the backlog of one service process every `interval` seconds until `stop()`."""

    def __init__(
        self,
        database: Database,
        jetstream: JetStreamContext,
        consumers: Sequence[ConsumerSpec],
        *,
        pool_name: str,
        interval: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._database = database
        self._jetstream = jetstream
        # Several workers of one durable share it: read it once.
        self._consumers = list({(spec.stream, spec.durable): spec for spec in consumers}.values())
        self._pool_name = pool_name
        self._interval = interval if interval is not None else poll_interval_seconds()
        self._clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self.reading = BacklogReading()

    async def run(self) -> None:
        _register_gauges()
        _active.add(self)
        try:
            while not self._stopping.is_set():
                await self.poll()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
        finally:
            _active.discard(self)

    def stop(self) -> None:
        self._stopping.set()

    async def poll(self) -> None:
        """One reading; a source that does not answer keeps its previous values (logged at DEBUG: the health
        checks already report an unreachable dependency)."""
        for spec in self._consumers:
            try:
                info = await self._jetstream.consumer_info(spec.stream, spec.durable, timeout=2)
            except Exception as exc:
                log.debug("consumer info of %s unavailable: %r", spec.durable, exc)
                continue
            self.reading.consumer_pending[(spec.stream, spec.durable)] = (
                int(info.num_pending or 0),
                int(info.num_ack_pending or 0),
            )
        try:
            await self._poll_tables()
        except Exception as exc:
            log.debug("backlog tables unavailable: %r", exc)

    async def _poll_tables(self) -> None:
        outbox = outbox_table
        async with self._database.read() as session:
            backlog, oldest = (
                await session.execute(
                    select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.published_at.is_(None))
                )
            ).one()
            dead = (
                await session.execute(
                    select(func.count())
                    .select_from(dead_letters_table)
                    .where(dead_letters_table.c.redriven_at.is_(None))
                )
            ).scalar_one()
        self.reading.outbox_backlog = int(backlog)
        self.reading.outbox_oldest_age = 0.0
        if oldest is not None:
            now = self._clock.now()
            if oldest.tzinfo is None:
                now = now.replace(tzinfo=None)
            self.reading.outbox_oldest_age = max((now - oldest).total_seconds(), 0.0)
        self.reading.dead_letters_open = int(dead)

    # What the gauge callbacks report ---------------------------------------------------------------------------

    def _consumer_labels(self, stream: str, durable: str) -> dict[str, str]:
        return {"messaging.consumer.group.name": durable, "messaging.nats.stream": stream}

    def pending_observations(self) -> list[Observation]:
        return [
            Observation(pending, self._consumer_labels(stream, durable))
            for (stream, durable), (pending, _ack) in self.reading.consumer_pending.items()
        ]

    def ack_pending_observations(self) -> list[Observation]:
        return [
            Observation(ack, self._consumer_labels(stream, durable))
            for (stream, durable), (_pending, ack) in self.reading.consumer_pending.items()
        ]

    def outbox_backlog_observations(self) -> list[Observation]:
        value = self.reading.outbox_backlog
        return [] if value is None else [Observation(value)]

    def outbox_age_observations(self) -> list[Observation]:
        value = self.reading.outbox_oldest_age
        return [] if value is None else [Observation(value)]

    def dead_letter_observations(self) -> list[Observation]:
        value = self.reading.dead_letters_open
        return [] if value is None else [Observation(value)]

    def pool_observations(self) -> list[Observation]:
        pool = self._database.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        checked_in = getattr(pool, "checkedin", None)
        if checked_out is None or checked_in is None:
            return []
        labels = {"db.client.connection.pool.name": self._pool_name}
        return [
            Observation(int(checked_out()), {**labels, "db.client.connection.state": "used"}),
            Observation(int(checked_in()), {**labels, "db.client.connection.state": "idle"}),
        ]
