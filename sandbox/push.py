"""users.watch / users.stop and Pub/Sub push: coalesced notifications, the push envelope, an OIDC JWT, retries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from sandbox.errors import GoogleApiError, bad_request
from sandbox.keys import SigningKey
from sandbox.settings import PUSH_OVER_RATE_DROP, SandboxClock, SandboxSettings
from sandbox.state import HistoryRecord, Mailbox

_TOPIC = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")
_ACK_STATUSES = {102, 200, 201, 202, 204}
GMAIL_PUBLISHER = "gmail-api-push@system.gserviceaccount.com"
TOKEN_LIFETIME_S = 3600
# A signed push token is reused for this long (well inside its hour), as a token cache in front of a signer would.
TOKEN_REUSE_S = 600


@dataclass
class PushTarget:
    """Where a topic's messages go: the push subscription's endpoint and its OIDC token settings."""

    push_endpoint: str | None = None
    audience: str | None = None
    service_account_email: str = "push-sandbox@sandbox-project.iam.gserviceaccount.com"
    subscription: str = "projects/sandbox-project/subscriptions/gmail-push"
    publish_granted: bool = True


@dataclass
class Watch:
    topic: str
    label_ids: list[str]
    behavior: str
    expiration_ms: int


@dataclass
class DeliveryLog:
    address: str
    history_id: int
    message_id: str
    endpoint: str | None
    attempts: int = 0
    statuses: list[int | str] = field(default_factory=list)
    acknowledged: bool = False
    # Pub/Sub lost it (the sandbox's `push_drop_share`): never posted, as a push Google drops.
    dropped: bool = False


class PushService:
    """Turns mailbox changes into Pub/Sub push requests, at most one per `push_min_interval_s` per mailbox."""

    def __init__(
        self,
        settings: SandboxSettings,
        clock: SandboxClock,
        key: SigningKey,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.clock = clock
        self.key = key
        self.default_target = PushTarget()
        self.topics: dict[str, PushTarget] = {}
        self.watches: dict[str, Watch] = {}
        self.deliveries: list[DeliveryLog] = []
        # Changes per address never notified because they came within the rate interval ("drop").
        self.dropped_over_rate: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._last_publish: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._published: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._settled = asyncio.Condition()
        self._sequence = 0
        # Signed push tokens by (audience, service account, key id) with the time they were issued: a token
        # lives an hour and is reused for TOKEN_REUSE_S, so a push costs no RSA signature.
        self._tokens: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.session:
            await self.session.close()

    def reset(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._timers.clear()
        self.watches.clear()
        self.topics.clear()
        self.deliveries.clear()
        self.dropped_over_rate.clear()
        self._pending.clear()
        self._last_publish.clear()
        self._published.clear()
        self._queued.clear()
        self._tokens.clear()
        self.default_target = PushTarget()

    # -- configuration --------------------------------------------------------------------------------------

    def configure(self, topic: str | None, changes: dict[str, Any]) -> PushTarget:
        target = (
            self.default_target
            if topic is None
            else self.topics.setdefault(topic, PushTarget(push_endpoint=None))
        )
        for name, value in changes.items():
            if not hasattr(target, name):
                raise bad_request(f"Unknown push field: {name}")
            setattr(target, name, value)
        return target

    def _target(self, topic: str) -> PushTarget:
        configured = self.topics.get(topic)
        if configured is None:
            return self.default_target
        merged = asdict(self.default_target)
        merged.update({k: v for k, v in asdict(configured).items() if v is not None})
        return PushTarget(**merged)

    def report(self) -> dict[str, Any]:
        return {
            "default": asdict(self.default_target),
            "topics": {k: asdict(v) for k, v in self.topics.items()},
            "watches": {k: asdict(v) for k, v in self.watches.items()},
            "deliveries": [asdict(d) for d in self.deliveries],
            "dropped_over_rate": dict(self.dropped_over_rate),
        }

    # -- watch / stop -----------------------------------------------------------------------------------------

    def watch(self, mailbox: Mailbox, body: dict[str, Any]) -> dict[str, str]:
        topic = body.get("topicName") or ""
        pattern = f"projects/{self.settings.project_id}/topics/*"
        found = _TOPIC.match(topic)
        if not found or found.group(1) != self.settings.project_id:
            raise bad_request(f"Invalid topicName does not match {pattern}", reason="invalidArgument")
        if topic not in self.topics and self.default_target.push_endpoint is None:
            raise GoogleApiError(404, "notFound", f"Resource not found (resource={found.group(2)}).")
        if not self._target(topic).publish_granted:
            raise GoogleApiError(
                403,
                "forbidden",
                f"Error sending test message to Cloud PubSub {topic} : User not authorized to perform this action.",
            )
        behavior = str(body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include").lower()
        if behavior not in ("include", "exclude"):
            raise bad_request(f"Invalid labelFilterBehavior: {behavior}", reason="invalidArgument")
        expiration = self.clock.now_ms() + self.settings.watch_lifetime_s * 1000
        self.watches[mailbox.address] = Watch(
            topic=topic,
            label_ids=list(body.get("labelIds") or []),
            behavior=behavior,
            expiration_ms=expiration,
        )
        self._queue(mailbox.address, mailbox.history_id)
        return {"historyId": str(mailbox.history_id), "expiration": str(expiration)}

    def stop_watch(self, mailbox: Mailbox) -> None:
        self.watches.pop(mailbox.address, None)

    # -- notifications ---------------------------------------------------------------------------------------

    def on_change(self, mailbox: Mailbox, record: HistoryRecord) -> None:
        """State listener: queue a notification when the change passes the watch's label filter."""
        watch = self.watches.get(mailbox.address)
        if watch is None or watch.expiration_ms < self.clock.now_ms():
            return
        if watch.label_ids:
            labels = set(record.message["labelIds"]) | set(record.changed_labels)
            touches = bool(labels & set(watch.label_ids))
            if touches != (watch.behavior == "include"):
                return
        self._queue(mailbox.address, record.id)

    def _queue(self, address: str, history_id: int) -> None:
        wait = self._last_publish.get(address, -1e9) + self.settings.push_min_interval_s - time.monotonic()
        if wait > 0 and self.settings.push_over_rate == PUSH_OVER_RATE_DROP and address not in self._timers:
            # Above Gmail's one notification a second per mailbox: this change is never notified.
            self.dropped_over_rate[address] = self.dropped_over_rate.get(address, 0) + 1
            return
        self._queued[address] = max(history_id, self._queued.get(address, 0))
        self._pending[address] = max(history_id, self._pending.get(address, 0))
        if address in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[address] = loop.call_later(max(0.0, wait), self._publish, address)

    def _publish(self, address: str) -> None:
        self._timers.pop(address, None)
        history_id = self._pending.pop(address, None)
        watch = self.watches.get(address)
        if history_id is None or watch is None:
            return
        self._last_publish[address] = time.monotonic()
        self._sequence += 1
        target = self._target(watch.topic)
        log = DeliveryLog(
            address=address,
            history_id=history_id,
            message_id=str(17_000_000_000 + self._sequence),
            endpoint=target.push_endpoint,
        )
        self.deliveries.append(log)
        if self.settings.push_drop_share > 0 and self.rng.random() < self.settings.push_drop_share:
            log.dropped = True
            settled = asyncio.get_running_loop().create_task(self._mark_settled(log))
            self._tasks.add(settled)
            settled.add_done_callback(self._tasks.discard)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(log, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def envelope(self, log: DeliveryLog, target: PushTarget) -> dict[str, Any]:
        data = json.dumps({"emailAddress": log.address, "historyId": log.history_id}).encode()
        published = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return {
            "message": {
                "data": base64.b64encode(data).decode("ascii"),
                "attributes": {},
                "messageId": log.message_id,
                "message_id": log.message_id,
                "publishTime": published,
                "publish_time": published,
            },
            "subscription": target.subscription,
        }

    def oidc_token(self, target: PushTarget) -> str:
        # Real wall time, not the sandbox clock: the receiver verifies exp/iat against its own clock.
        now = int(time.time())
        audience = target.audience or target.push_endpoint or ""
        cache_key = (audience, target.service_account_email, self.key.kid)
        cached = self._tokens.get(cache_key)
        if cached is not None and now - cached[1] < TOKEN_REUSE_S:
            return cached[0]
        subject = str(int(hashlib.sha256(target.service_account_email.encode()).hexdigest()[:16], 16))
        token = self.key.sign(
            {
                "iss": "https://accounts.google.com",
                "aud": audience,
                "azp": subject,
                "sub": subject,
                "email": target.service_account_email,
                "email_verified": True,
                "iat": now,
                "exp": now + TOKEN_LIFETIME_S,
            }
        )
        self._tokens[cache_key] = (token, now)
        return token

    async def _deliver(self, log: DeliveryLog, target: PushTarget) -> None:
        delay = self.settings.push_retry_initial_s
        try:
            while target.push_endpoint and log.attempts < self.settings.push_max_attempts:
                log.attempts += 1
                try:
                    assert self.session is not None
                    async with self.session.post(
                        target.push_endpoint,
                        json=self.envelope(log, target),
                        headers={
                            "Authorization": f"Bearer {self.oidc_token(target)}",
                            "User-Agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
                        },
                    ) as response:
                        log.statuses.append(response.status)
                        if response.status in _ACK_STATUSES:
                            log.acknowledged = True
                            return
                except (TimeoutError, aiohttp.ClientError) as error:
                    log.statuses.append(type(error).__name__)
                if log.attempts == 1:
                    await self._mark_settled(log)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.push_retry_max_s)
        finally:
            await self._mark_settled(log)

    async def _mark_settled(self, log: DeliveryLog) -> None:
        async with self._settled:
            self._published[log.address] = max(self._published.get(log.address, 0), log.history_id)
            self._settled.notify_all()

    async def wait_pushed(self, address: str, history_id: int, timeout_s: float = 5.0) -> None:
        """Wait until a notification at or past `history_id` had its first delivery attempt (echo-first mode)."""
        if address not in self.watches or self._queued.get(address, 0) < history_id:
            return  # not watched, or the watch's label filter let this change through without a notification
        timer = self._timers.get(address)
        if timer is not None and timer.when() > asyncio.get_running_loop().time():
            # Held back by the one-per-second notification rate: Gmail never delays a send's answer for it, so
            # neither does the sandbox (otherwise every mailbox could send once a second at most).
            return
        async with self._settled:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._settled.wait_for(lambda: self._published.get(address, 0) >= history_id), timeout_s
                )
