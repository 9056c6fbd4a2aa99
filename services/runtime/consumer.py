"""The consumer loop: a durable pull consumer that runs a handler and acknowledges only after it returned.

Two kinds of handler. A per-message `Handler` commits its own database transaction (using `inbox.claim` to make
its effect idempotent) and `Consumer` acks each message with a double ack once its handler returned. A
`BatchHandler` gets every message of a fetch at once, commits them in one transaction and says, per message,
whether it was applied, must wait (`RetryLater`) or failed; `BatchConsumer` then acks the applied ones together
(pipelined: every ack is written, then one flush round trip for the batch) and settles the others one by one.

Settling, the same for both: a failed message is redelivered with a growing delay, and after `max_deliver`
failures it is written to the service's dead_letters table and terminated. A message that raised (or was reported
with) `RetryLater` is not failing: it comes back after the delay, and only the separate `max_waits` budget limits
how often. In a batch, a waiting or failing message is settled on its own and never holds back the others. A batch
handler that raises (its commit failed, or something it cannot attribute to one message) committed nothing; the
batch is then split in two halves, each handled again, recursively, so a poison message ends alone and is counted
as failed while the rest of the batch is applied.

Why failures and waits are counted apart: JetStream has one counter (`num_delivered`) for every delivery. The
server's MaxDeliver is therefore set to `max_deliver + max_waits`, a hard bound that always holds, and the loop
counts failures per message in memory so that a poison message is dead-lettered after `max_deliver` failures even
when it waited before. After a restart the in-memory count starts again, bounded by the server's limit.

A process that crashes (or hangs past ack_wait) on the last allowed delivery never reaches the dead-letter code,
and JetStream then leaves the message in the stream with no further delivery. The loop therefore also listens to
JetStream's MAX_DELIVERIES advisory for its consumer and records such a message as a dead letter too.

Order, which threading relies on (stated here because the loop is what keeps it):
* A batch handler sees the deliveries of one fetch in stream-sequence order, and one consumer object handles one
  batch at a time: batch n+1 is fetched only after every message of batch n is settled, so whatever batch n
  committed is visible to batch n+1. When a batch is split, its halves are handled first half first.
* A message is acked only after the transaction that applied it committed (a crash between commit and ack
  redelivers it, so handlers must make a repeated message a no-op).
* A message that waits or fails is redelivered later, after the messages behind it; nothing else is promised
  across redeliveries, replicas or consumers: handlers that need an order wait for what they depend on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from opentelemetry import context as otel_context
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
    get_current_span,
)

from services.runtime import subjects
from services.runtime.backoff import doubling_delay
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.deadletters import record_dead_letter
from services.runtime.faults import CONSUMER_AFTER_HANDLER, fault_point
from services.runtime.jetstream import MSG_ID_HEADER, extract_context, tracer

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# How many per-message failure counts a consumer remembers (messages that moved to another replica leave theirs).
_FAILURE_MEMORY = 10_000
# Links a batch span carries (the OpenTelemetry SDK's default limit: more would be dropped anyway).
_MAX_LINKS = 128
# Waits between attempts to declare the durable consumer while JetStream does not answer (a restarting broker).
_DECLARE_FIRST_DELAY = 0.5
_DECLARE_MAX_DELAY = 5.0
# A top-up's fetch takes what the server holds once the linger is over; waiting `linger` again there would make a
# message that arrives alone wait twice the linger. The bound only covers the round trip: what arrives after it is
# kept in the subscription's queue, and the next fetch takes it first.
TOP_UP_FETCH_SECONDS = 0.01


class RetryLater(Exception):
    """Raised by a handler: nothing is wrong, but this message cannot be handled yet; redeliver after `delay`."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay} s")
        self.delay = delay
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message to a handler."""

    consumer: str
    stream: str
    stream_sequence: int
    subject: str
    payload: bytes
    headers: Mapping[str, str]
    msg_id: str | None
    num_delivered: int

    def parse(self, message_type: type[M]) -> M:
        """Decodes the payload as the given protobuf message type."""
        message = message_type()
        message.ParseFromString(self.payload)
        return message

    def trace_context(self) -> otel_context.Context:
        """The trace context its producer sent: the trace of the email or send this message is part of."""
        return self._producer_context

    @functools.cached_property
    def _producer_context(self) -> otel_context.Context:
        # Read once: the batch's link, the message's span and the handler's log lines each ask for it.
        return extract_context(self.headers)


@contextlib.contextmanager
def in_trace_of(delivery: Delivery) -> Iterator[None]:
    """Runs the block (a log line about one message of a batch) in the trace the message's producer sent."""
    token = otel_context.attach(delivery.trace_context())
    try:
        yield
    finally:
        otel_context.detach(token)


Handler = Callable[[Delivery], Awaitable[None]]
# Per delivery, in the order given: None (applied and committed), RetryLater (wait) or the exception it failed with.
Outcome = Exception | None
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[Sequence[Outcome]]]


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer and its redelivery policy (times in seconds)."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait: float = 30.0
    # Failed deliveries before the dead-letter record.
    max_deliver: int = 5
    # Extra deliveries a handler may spend on RetryLater before the message is dead-lettered as stuck.
    max_waits: int = 0
    # Delay before the redelivery of a failed message; doubles with each failure up to max_retry_delay.
    retry_delay: float = 1.0
    max_retry_delay: float = 60.0
    max_ack_pending: int = 1000
    # Messages fetched at once. A per-message consumer handles them one after another (1 keeps a message from
    # waiting behind a slow one); a batch consumer hands them to its handler together.
    batch: int = 1
    # Seconds a batch consumer whose fetch came back short waits once for more before handling it (0: never). A
    # batch's fixed cost (its transaction, two dozen statements) is then shared by more messages when they arrive
    # a few at a time, as ingest's passes publish them; each message waits at most this much longer.
    linger: float = 0.0

    @property
    def server_max_deliver(self) -> int:
        return self.max_deliver + self.max_waits

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.server_max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subjects=list(self.filter_subjects),
        )

    def retry_delay_after(self, failures: int) -> float:
        return doubling_delay(self.retry_delay, self.max_retry_delay, failures)


async def declare_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Creates the durable consumer, or updates it to the spec (idempotent)."""
    await js.add_consumer(spec.stream, spec.config())


async def fetch_more(subscription: Any, messages: list[Msg], *, up_to: int, wait: float) -> list[Msg]:
    """`messages` and what a pull `subscription` has now (waiting at most `wait` when it has none), `up_to`
    messages in all, in stream-sequence order."""
    if len(messages) >= up_to:
        return messages
    try:
        more = await subscription.fetch(up_to - len(messages), timeout=wait)
    except (TimeoutError, nats.errors.Error):
        # Nothing more came (or the fetch failed: the loop's next fetch reports it); the batch goes as it is.
        return messages
    return sorted([*messages, *more], key=lambda m: m.metadata.sequence.stream)


def jetstream_unavailable(exc: BaseException) -> bool:
    """Whether an error means JetStream did not answer yet (worth retrying), not that it refused the request.

    A broker that was just (re)started accepts connections before JetStream has recovered its store: requests
    then time out, find no responder or get 503; the connection may also be down. A real answer (a 400 for a bad
    config, say) is not transient and must not be retried for ever."""
    if isinstance(exc, ServiceUnavailableError):
        return True
    if isinstance(exc, APIError):
        return False
    return isinstance(exc, (TimeoutError, nats.errors.Error))


class _PullLoop(ABC):
    """What both consumers share: fetching, settling waits and failures, dead letters and the advisory."""

    def __init__(
        self,
        client: Client,
        spec: ConsumerSpec,
        *,
        db: Database,
        clock: Clock | None = None,
        tracer_provider: TracerProvider | None = None,
        fetch_timeout: float = 1.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._js = client.jetstream()
        self._spec = spec
        self._db = db
        self._clock = clock or SystemClock()
        self._tracer = tracer(tracer_provider)
        self._fetch_timeout = fetch_timeout
        self._ack_timeout = ack_timeout
        self._stopping = asyncio.Event()
        self._failures: OrderedDict[int, int] = OrderedDict()

    @property
    def spec(self) -> ConsumerSpec:
        return self._spec

    def stop(self) -> None:
        """Stops fetching; `run()` returns once the message (or batch) in hand is finished."""
        self._stopping.set()

    async def run(self) -> None:
        if not await self._declare_until_answered():
            return
        advisories = await self._client.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._spec.stream}.{self._spec.durable}",
            cb=self._on_max_deliveries,
        )
        subscription = await self._js.pull_subscribe_bind(
            durable=self._spec.durable, stream=self._spec.stream
        )
        # Failed fetches in a row: an outage is logged when it starts and when it ends, not once a second.
        failed_fetches = 0
        try:
            while not self._stopping.is_set():
                try:
                    messages = await subscription.fetch(self._spec.batch, timeout=self._fetch_timeout)
                except TimeoutError:
                    # nats-py raises its own TimeoutError, and for a batch also asyncio's (the same builtin).
                    failed_fetches = self._fetch_recovered(failed_fetches)
                    continue
                except nats.errors.Error as exc:
                    if not failed_fetches:
                        log.warning(
                            "fetch from %s failed: %s; retrying every second", self._spec.durable, exc
                        )
                    failed_fetches += 1
                    await self._pause(1.0)
                    continue
                failed_fetches = self._fetch_recovered(failed_fetches)
                if messages and self._spec.linger and len(messages) < self._spec.batch:
                    messages = await self._top_up(subscription, messages)
                if messages:
                    await self._handle_fetched(messages)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            with contextlib.suppress(Exception):
                await advisories.unsubscribe()

    async def _declare_until_answered(self) -> bool:
        """Declares the durable consumer, retrying while JetStream does not answer; False if stopped meanwhile.

        Without the retry, a service started while nats-server restarts lost its consumer loop to the first
        timed-out declare, and the service then stopped itself (docs/chaos.md)."""
        delay = _DECLARE_FIRST_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                await declare_consumer(self._js, self._spec)
            except Exception as exc:
                if not jetstream_unavailable(exc):
                    raise
                log.warning(
                    "declaring consumer %s on %s failed (attempt %s): %s; retrying in %.1f s",
                    self._spec.durable,
                    self._spec.stream,
                    attempt,
                    _describe(exc),
                    delay,
                )
                await self._pause(delay)
                if self._stopping.is_set():
                    return False
                delay = min(delay * 2, _DECLARE_MAX_DELAY)
                continue
            if attempt > 1:
                log.warning("consumer %s declared after %s attempts", self._spec.durable, attempt)
            return True

    async def _top_up(self, subscription: Any, messages: list[Msg]) -> list[Msg]:
        """`messages` and what arrived within `spec.linger`, up to `spec.batch`, in stream order."""
        await self._pause(self._spec.linger)
        if self._stopping.is_set():
            return messages
        return await fetch_more(subscription, messages, up_to=self._spec.batch, wait=TOP_UP_FETCH_SECONDS)

    def _fetch_recovered(self, failed_fetches: int) -> int:
        if failed_fetches:
            log.warning(
                "fetch from %s works again after %s failed attempts", self._spec.durable, failed_fetches
            )
        return 0

    @abstractmethod
    async def _handle_fetched(self, messages: list[Msg]) -> None:
        """Handles the messages of one fetch (each consumer kind in its own way)."""

    def _delivery(self, message: Msg) -> Delivery:
        metadata = message.metadata
        headers = dict(message.headers or {})
        return Delivery(
            consumer=self._spec.durable,
            stream=metadata.stream,
            stream_sequence=metadata.sequence.stream,
            subject=message.subject,
            payload=message.data,
            headers=headers,
            msg_id=headers.get(MSG_ID_HEADER),
            num_delivered=metadata.num_delivered,
        )

    async def _settle_unapplied(self, message: Msg, delivery: Delivery, outcome: Exception) -> None:
        """A message its handler did not apply: it waits (RetryLater) or failed."""
        if isinstance(outcome, RetryLater):
            await self._on_wait(message, delivery, outcome)
        else:
            await self._on_failure(message, delivery, outcome)

    async def _on_wait(self, message: Msg, delivery: Delivery, wait: RetryLater) -> None:
        if delivery.num_delivered >= self._spec.server_max_deliver:
            reason = f"still waiting after {delivery.num_delivered} deliveries: {wait.reason or 'RetryLater'}"
            await self._dead_letter(message, delivery, reason)
            return
        await _quietly(message.nak(delay=max(wait.delay, 0.001)))

    async def _on_failure(self, message: Msg, delivery: Delivery, exc: Exception) -> None:
        failures = self._count_failure(delivery.stream_sequence)
        log.warning(
            "handler %s failed on %s seq %s (delivery %s, failure %s): %r",
            self._spec.durable,
            delivery.subject,
            delivery.stream_sequence,
            delivery.num_delivered,
            failures,
            exc,
        )
        if failures >= self._spec.max_deliver or delivery.num_delivered >= self._spec.server_max_deliver:
            await self._dead_letter(message, delivery, f"{type(exc).__name__}: {exc}")
            return
        await _quietly(message.nak(delay=self._spec.retry_delay_after(failures)))

    async def _dead_letter(self, message: Msg, delivery: Delivery, error: str) -> None:
        try:
            await record_dead_letter(self._db, delivery, error, clock=self._clock)
        except Exception as exc:
            log.error(
                "cannot record dead letter for %s seq %s: %r", delivery.subject, delivery.stream_sequence, exc
            )
            await _quietly(message.nak(delay=self._spec.max_retry_delay))
            return
        self._failures.pop(delivery.stream_sequence, None)
        log.error("dead-lettered %s seq %s: %s", delivery.subject, delivery.stream_sequence, error)
        await _quietly(message.term())

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """Records a message whose last delivery ended without an outcome (the process crashed or timed out)."""
        try:
            body = json.loads(advisory.data)
            sequence, deliveries = int(body["stream_seq"]), int(body["deliveries"])
            stored = await self._js.get_msg(self._spec.stream, sequence)
        except NotFoundError:
            return
        except Exception as exc:
            log.error(
                "cannot read the message of a max-deliveries advisory for %s: %r", self._spec.durable, exc
            )
            return
        headers = dict(stored.headers or {})
        delivery = Delivery(
            consumer=self._spec.durable,
            stream=self._spec.stream,
            stream_sequence=sequence,
            subject=stored.subject or "",
            payload=stored.data or b"",
            headers=headers,
            msg_id=headers.get(MSG_ID_HEADER),
            num_delivered=deliveries,
        )
        error = f"no outcome after {deliveries} deliveries (the handler crashed or exceeded ack_wait on the last one)"
        try:
            await record_dead_letter(self._db, delivery, error, clock=self._clock)
            log.error("dead-lettered %s seq %s: %s", delivery.subject, sequence, error)
            # A work queue would keep the undeliverable message forever; other streams age it out.
            info = await self._js.stream_info(self._spec.stream)
            if info.config.retention == RetentionPolicy.WORK_QUEUE:
                with contextlib.suppress(NotFoundError):
                    await self._js.delete_msg(self._spec.stream, sequence)
        except Exception as exc:
            log.error(
                "cannot dead-letter %s seq %s after max deliveries: %r", delivery.subject, sequence, exc
            )

    def _count_failure(self, sequence: int) -> int:
        failures = self._failures.pop(sequence, 0) + 1
        self._failures[sequence] = failures
        while len(self._failures) > _FAILURE_MEMORY:
            self._failures.popitem(last=False)
        return failures

    async def _keep_alive(self, messages: Sequence[Msg]) -> None:
        """Tells JetStream the handler is still working, so a long handler is not redelivered mid-way."""
        interval = max(self._spec.ack_wait / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            for message in messages:
                await _quietly(message.in_progress())

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


class Consumer(_PullLoop):
    """Runs a per-message `handler` for every message of a durable consumer until `stop()`."""

    def __init__(self, client: Client, spec: ConsumerSpec, handler: Handler, **options: Any) -> None:
        super().__init__(client, spec, **options)
        self._handler = handler

    async def _handle_fetched(self, messages: list[Msg]) -> None:
        for message in messages:
            if self._stopping.is_set():
                # Hand the rest of the fetch back at once rather than after ack_wait.
                await _quietly(message.nak())
                continue
            await self.process(message)

    async def process(self, message: Msg) -> None:
        """Handles one message: handler, then ack; or nak/dead-letter on failure."""
        delivery = self._delivery(message)
        # Attached, not only passed as the parent: the producer's baggage (the push time) then rides along into
        # whatever the handler publishes.
        with (
            in_trace_of(delivery),
            self._tracer.start_as_current_span(
                f"process {subjects.kind_of(delivery.subject)}",
                kind=SpanKind.CONSUMER,
                attributes=_process_attributes(delivery),
            ) as span,
        ):
            outcome: Exception | None = None
            keep_alive = asyncio.create_task(self._keep_alive((message,)))
            try:
                await self._handler(delivery)
            except Exception as exc:
                outcome = exc
            finally:
                keep_alive.cancel()
            if outcome is None:
                fault_point(CONSUMER_AFTER_HANDLER)
                await self._ack(message, delivery)
                return
            if isinstance(outcome, RetryLater):
                span.set_attribute("messaging.nats.retry_later", outcome.delay)
            else:
                span.record_exception(outcome)
                span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
            await self._settle_unapplied(message, delivery, outcome)

    async def _ack(self, message: Msg, delivery: Delivery) -> None:
        self._failures.pop(delivery.stream_sequence, None)
        try:
            await message.ack_sync(timeout=self._ack_timeout)
        except Exception as exc:
            # The effect is committed and idempotent: the redelivery this causes is skipped by the handler.
            log.warning("ack of %s seq %s failed: %s", delivery.subject, delivery.stream_sequence, exc)


class BatchConsumer(_PullLoop):
    """Hands each fetch (up to `spec.batch` messages, in stream order) to a `BatchHandler` until `stop()`."""

    def __init__(self, client: Client, spec: ConsumerSpec, handler: BatchHandler, **options: Any) -> None:
        super().__init__(client, spec, **options)
        self._handler = handler

    async def _handle_fetched(self, messages: list[Msg]) -> None:
        await self.process_batch(messages)

    async def process_batch(self, messages: Sequence[Msg]) -> None:
        """Handles a batch: handler (one commit), then the applied messages acked together, the rest settled."""
        deliveries = [self._delivery(message) for message in messages]
        # One span for the batch, linked to the span that published each message (OpenTelemetry's batch form), up
        # to the number of links a span keeps.
        links = [
            Link(get_current_span(d.trace_context()).get_span_context())
            for d in deliveries[:_MAX_LINKS]
            if "traceparent" in d.headers
        ]
        with self._tracer.start_as_current_span(
            f"process {self._spec.stream}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self._spec.durable,
                "messaging.batch.message_count": len(deliveries),
            },
        ) as batch_span:
            # And one span per message in its producer's trace (linked to the batch), so each email's trace
            # still runs from its push to the stored message when it was handled in a batch.
            message_spans = [self._message_span(d, batch_span.get_span_context()) for d in deliveries]
            keep_alive = asyncio.create_task(self._keep_alive(messages))
            try:
                await self._settle(messages, deliveries)
            finally:
                keep_alive.cancel()
                for span in message_spans:
                    span.end()

    def _message_span(self, delivery: Delivery, batch: SpanContext) -> Span:
        return self._tracer.start_span(
            f"process {subjects.kind_of(delivery.subject)}",
            context=delivery.trace_context(),
            kind=SpanKind.CONSUMER,
            links=[Link(batch)],
            attributes=_process_attributes(delivery),
        )

    async def _settle(self, messages: Sequence[Msg], deliveries: Sequence[Delivery]) -> None:
        try:
            outcomes = list(await self._handler(deliveries))
            if len(outcomes) != len(deliveries):
                raise RuntimeError(
                    f"the handler returned {len(outcomes)} outcomes for {len(deliveries)} messages"
                )
        except Exception as exc:
            if len(deliveries) == 1:
                outcomes = [exc]
            else:
                # Nothing of this batch was committed: split it to find the message that makes it fail.
                half = len(deliveries) // 2
                log.warning(
                    "batch of %s from %s failed (%r); handling it in two halves",
                    len(deliveries),
                    self._spec.durable,
                    exc,
                )
                await self._settle(messages[:half], deliveries[:half])
                await self._settle(messages[half:], deliveries[half:])
                return
        fault_point(CONSUMER_AFTER_HANDLER)
        await self._ack_all(
            [m for m, d, o in zip(messages, deliveries, outcomes, strict=True) if o is None],
            [d for d, o in zip(deliveries, outcomes, strict=True) if o is None],
        )
        for message, delivery, outcome in zip(messages, deliveries, outcomes, strict=True):
            if outcome is not None:
                await self._settle_unapplied(message, delivery, outcome)

    async def _ack_all(self, messages: Sequence[Msg], deliveries: Sequence[Delivery]) -> None:
        """Acks committed messages: every ack is written, then one flush waits for the server to have them all."""
        if not messages:
            return
        for delivery in deliveries:
            self._failures.pop(delivery.stream_sequence, None)
        try:
            for message in messages:
                await message.ack()
            await self._client.flush(timeout=math.ceil(self._ack_timeout))
        except Exception as exc:
            # The effects are committed and idempotent: the redeliveries this causes are no-ops for the handler.
            log.warning("acks of %s messages from %s failed: %s", len(messages), self._spec.durable, exc)


def _describe(exc: BaseException) -> str:
    """One line for a log: nats-py's timeouts and closed connections have empty messages."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _quietly(operation: Awaitable[object]) -> None:
    """Acks that fail (connection lost) are harmless: the message is simply redelivered."""
    try:
        await operation
    except Exception as exc:
        log.warning("JetStream ack operation failed: %s", exc)


# What both consumer kinds are, for code that needs to find the durables a process runs (the backlog gauges).
PullLoop = _PullLoop


def _process_attributes(delivery: Delivery) -> dict[str, Any]:
    """The CONSUMER span's attributes of one delivery (messaging semantic conventions, ids of its subject)."""
    return {
        **subjects.key_attributes(delivery.subject),
        "messaging.system": "nats",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": delivery.subject,
        "messaging.consumer.group.name": delivery.consumer,
        "messaging.message.id": delivery.msg_id or "",
        "messaging.nats.stream_sequence": delivery.stream_sequence,
        "messaging.nats.num_delivered": delivery.num_delivered,
    }
