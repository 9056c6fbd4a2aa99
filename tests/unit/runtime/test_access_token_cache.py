"""The access-token cache ingest and outbound share: one fetch per mailbox however many callers ask at once, a token
near its expiry fetched anew, a forgotten (refused) token never served again, even when a fetch in flight brings it
back, and a refused token named to the next fetch only."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from services.runtime.access_token_cache import AccessTokenCache, IssuedToken
from services.runtime.clock import FrozenClock

START = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


class Auth:
    """Auth's GetAccessToken as the cache sees it: numbered tokens, and a gate a test can hold a fetch at."""

    def __init__(self, clock: FrozenClock, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[str] = []
        self.named_refused: list[str] = []
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None

    async def fetch(self, mailbox_id: str, refused_token: str) -> IssuedToken:
        self.calls.append(mailbox_id)
        self.named_refused.append(refused_token)
        number = len(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return IssuedToken(f"{mailbox_id}-token-{number}", self.clock.now() + self.lifetime)


async def test_concurrent_sends_of_a_mailbox_share_one_fetch_and_later_ones_use_the_cache() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    auth.gate = asyncio.Event()
    cache = AccessTokenCache(auth.fetch, clock=clock)

    waiting = [asyncio.ensure_future(cache.token("mb1")) for _ in range(5)] + [
        asyncio.ensure_future(cache.token("mb2"))
    ]
    await asyncio.sleep(0)
    auth.gate.set()
    tokens = await asyncio.gather(*waiting)

    assert tokens == ["mb1-token-1"] * 5 + ["mb2-token-2"]
    assert await cache.token("mb1") == "mb1-token-1"
    assert auth.calls == ["mb1", "mb2"]


async def test_a_token_within_the_margin_of_its_expiry_is_fetched_anew() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock, lifetime=dt.timedelta(minutes=10))
    cache = AccessTokenCache(auth.fetch, clock=clock, margin=dt.timedelta(minutes=1))
    assert await cache.token("mb1") == "mb1-token-1"

    clock.advance(dt.timedelta(minutes=8, seconds=59))
    assert await cache.token("mb1") == "mb1-token-1"
    clock.advance(dt.timedelta(seconds=2))
    assert await cache.token("mb1") == "mb1-token-2"


async def test_a_forgotten_token_is_fetched_anew() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    cache = AccessTokenCache(auth.fetch, clock=clock)
    assert await cache.token("mb1") == "mb1-token-1"

    cache.forget("mb1")

    assert await cache.token("mb1") == "mb1-token-2"
    assert auth.calls == ["mb1", "mb1"]


async def test_forgetting_during_a_fetch_keeps_its_answer_out_of_the_cache() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    auth.gate = asyncio.Event()
    cache = AccessTokenCache(auth.fetch, clock=clock)
    in_flight = asyncio.ensure_future(cache.token("mb1"))
    await asyncio.sleep(0)

    cache.forget("mb1")
    later = asyncio.ensure_future(cache.token("mb1"))
    await asyncio.sleep(0)
    auth.gate.set()

    # The caller that asked before the refusal gets what was in flight; nobody gets it from the cache afterwards.
    assert await in_flight == "mb1-token-1"
    assert await later == "mb1-token-2"
    assert await cache.token("mb1") == "mb1-token-2"
    assert auth.calls == ["mb1", "mb1"]


async def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    auth.gate = asyncio.Event()
    auth.failure = RuntimeError("auth is down")
    cache = AccessTokenCache(auth.fetch, clock=clock)
    waiting = [asyncio.ensure_future(cache.token("mb1")) for _ in range(3)]
    await asyncio.sleep(0)
    auth.gate.set()

    outcomes = await asyncio.gather(*waiting, return_exceptions=True)

    assert [str(outcome) for outcome in outcomes] == ["auth is down"] * 3
    auth.failure = None
    auth.gate = None
    assert await cache.token("mb1") == "mb1-token-2"


@pytest.mark.parametrize("mailbox_id", ["mb1", "mb2"])
async def test_forgetting_one_mailbox_leaves_the_others_token(mailbox_id: str) -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    cache = AccessTokenCache(auth.fetch, clock=clock)
    await cache.token("mb1")
    await cache.token("mb2")

    cache.forget(mailbox_id)

    other = "mb2" if mailbox_id == "mb1" else "mb1"
    assert await cache.token(other) == f"{other}-token-{1 if other == 'mb1' else 2}"
    assert await cache.token(mailbox_id) == f"{mailbox_id}-token-3"


async def test_a_refused_token_is_named_to_the_next_fetch_only() -> None:
    clock = FrozenClock(START)
    auth = Auth(clock)
    cache = AccessTokenCache(auth.fetch, clock=clock)
    first = await cache.token("mb1")

    cache.refuse("mb1")
    second = await cache.token("mb1")
    cache.forget("mb1")
    await cache.token("mb1")
    cache.refuse("mb1", "a-token-gmail-refused")
    await cache.token("mb1")

    assert second != first
    assert auth.named_refused == ["", first, "", "a-token-gmail-refused"]
