"""A cache of Gmail access tokens, one per mailbox, for ingest and outbound: auth is asked for a token only when the
one held is near its expiry or was forgotten (Gmail refused it, or the mailbox's connection changed).

Concurrent callers for a mailbox whose token is missing share one request to auth. `forget(mailbox_id)` drops the
mailbox's token at once, including one a request still in flight would bring back: that answer may be the very
token that was refused. `refuse(mailbox_id)` also names the refused token to the next fetch, so auth refreshes the
grant instead of returning the same token (a dead grant is then seen at once).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.runtime.clock import Clock, SystemClock

# A token is used only while it has at least this much life left (a Gmail call started with it must not outlive it).
DEFAULT_MARGIN = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class IssuedToken:
    value: str
    expires_at: dt.datetime


class AccessTokenCache:
    """Tokens by mailbox id, fetched through `fetch(mailbox_id, refused_token)` (auth's GetAccessToken) when missing
    or near expiry."""

    def __init__(
        self,
        fetch: Callable[[str, str], Awaitable[IssuedToken]],
        *,
        clock: Clock | None = None,
        margin: dt.timedelta = DEFAULT_MARGIN,
    ) -> None:
        self._fetch = fetch
        self._clock = clock or SystemClock()
        self._margin = margin
        self._tokens: dict[str, IssuedToken] = {}
        self._fetches: dict[str, asyncio.Future[IssuedToken]] = {}
        # Bumped by forget: a fetch that started before it must not store what it brings back.
        self._generations: dict[str, int] = {}
        # Per mailbox, the token Gmail last refused, until a fetch that named it succeeds.
        self._refused: dict[str, str] = {}

    async def token(self, mailbox_id: str) -> str:
        """A token with at least the margin's life left; errors of the fetch propagate (nothing is cached)."""
        cached = self._tokens.get(mailbox_id)
        if cached is not None and cached.expires_at - self._margin > self._clock.now():
            return cached.value
        fetch = self._fetches.get(mailbox_id)
        if fetch is None:
            # The generation is read now, not when the task first runs: a forget in between must count.
            generation = self._generations.get(mailbox_id, 0)
            fetch = asyncio.ensure_future(self._fetch_and_keep(mailbox_id, generation))
            self._fetches[mailbox_id] = fetch
            fetch.add_done_callback(lambda done: self._fetch_done(mailbox_id, done))
        return (await asyncio.shield(fetch)).value

    def current(self, mailbox_id: str) -> str:
        """The cached token, whatever its age ("" when none)."""
        cached = self._tokens.get(mailbox_id)
        return cached.value if cached is not None else ""

    def forget(self, mailbox_id: str) -> None:
        """Drops the mailbox's token (Gmail refused it, or its connection changed): the next caller fetches anew."""
        self._tokens.pop(mailbox_id, None)
        self._generations[mailbox_id] = self._generations.get(mailbox_id, 0) + 1
        # A fetch in flight may carry the refused token: later callers start their own.
        self._fetches.pop(mailbox_id, None)

    def refuse(self, mailbox_id: str, token: str = "") -> None:
        """Gmail refused `token` (else the one held): dropped, and named to the next fetch."""
        refused = token or self.current(mailbox_id)
        if refused:
            self._refused[mailbox_id] = refused
        self.forget(mailbox_id)

    async def _fetch_and_keep(self, mailbox_id: str, generation: int) -> IssuedToken:
        named = self._refused.get(mailbox_id, "")
        issued = await self._fetch(mailbox_id, named)
        if named and self._refused.get(mailbox_id) == named:
            del self._refused[mailbox_id]
        if self._generations.get(mailbox_id, 0) == generation:
            self._tokens[mailbox_id] = issued
        return issued

    def _fetch_done(self, mailbox_id: str, done: asyncio.Future[IssuedToken]) -> None:
        if self._fetches.get(mailbox_id) is done:
            del self._fetches[mailbox_id]
        if not done.cancelled():
            # Retrieved here so a failure nobody awaited any more is not reported as never retrieved.
            done.exception()
