"""Quota units per method and per user, from Google's published cost tables, with optional enforcement."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from sandbox.errors import GoogleApiError, user_rate_exceeded

_LEGACY_COSTS = {
    "gmail.users.getProfile": 1,
    "gmail.users.labels.get": 1,
    "gmail.users.labels.list": 1,
    "gmail.users.history.list": 2,
    "gmail.users.messages.get": 5,
    "gmail.users.messages.list": 5,
    "gmail.users.messages.modify": 5,
    "gmail.users.messages.attachments.get": 5,
    "gmail.users.messages.trash": 5,
    "gmail.users.messages.untrash": 5,
    "gmail.users.labels.create": 5,
    "gmail.users.labels.update": 5,
    "gmail.users.labels.patch": 5,
    "gmail.users.labels.delete": 5,
    "gmail.users.messages.delete": 10,
    "gmail.users.messages.insert": 25,
    "gmail.users.messages.import": 25,
    "gmail.users.messages.batchModify": 50,
    "gmail.users.messages.batchDelete": 50,
    "gmail.users.messages.send": 100,
    "gmail.users.threads.get": 10,
    "gmail.users.threads.list": 10,
    "gmail.users.threads.modify": 10,
    "gmail.users.threads.trash": 10,
    "gmail.users.threads.untrash": 10,
    "gmail.users.threads.delete": 20,
    "gmail.users.watch": 100,
    "gmail.users.stop": 50,
}
_2026_CHANGES = {
    "gmail.users.messages.get": 20,
    "gmail.users.messages.attachments.get": 20,
    "gmail.users.messages.trash": 20,
    "gmail.users.threads.get": 40,
}
COST_TABLES = {"legacy": _LEGACY_COSTS, "2026": {**_LEGACY_COSTS, **_2026_CHANGES}}
# (units, window seconds): legacy "250 units per user per second, moving average"; 2026 "6,000 per minute".
DEFAULT_USER_RATES = {"legacy": (250, 1.0), "2026": (6000, 60.0)}


class QuotaLedger:
    """Counts units and calls per user and method; when enforcing, refuses calls over the per-user rate."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.units: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.rejected: dict[str, int] = defaultdict(int)
        # HTTP requests to the Gmail API as they arrive on the wire (a batch is one), by surface.
        self.http_requests: dict[str, int] = defaultdict(int)
        self._window: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    @staticmethod
    def cost(table: str, method_id: str) -> int:
        return COST_TABLES[table].get(method_id, 5)

    def charge(
        self, user: str, method_id: str, table: str, enforce: bool, limit: int | None, window_s: float | None
    ) -> None:
        units = self.cost(table, method_id)
        if enforce:
            default_limit, default_window = DEFAULT_USER_RATES[table]
            limit = limit or default_limit
            window_s = window_s or default_window
            now = self.now()
            recent = self._window[user]
            while recent and recent[0][0] <= now - window_s:
                recent.popleft()
            if sum(u for _, u in recent) + units > limit:
                self.rejected[user] += 1
                raise self._over_limit()
            recent.append((now, units))
        self.units[user][method_id] += units
        self.calls[user][method_id] += 1

    def count_request(self, surface: str) -> None:
        """One HTTP request to the Gmail API (`gmail`, `batch` or `upload`), whatever it carries."""
        self.http_requests[surface] += 1

    @staticmethod
    def _over_limit() -> GoogleApiError:
        return user_rate_exceeded()

    def report(self) -> dict[str, object]:
        users: dict[str, dict[str, Any]] = {}
        for user, per_method in self.units.items():
            users[user] = {
                "total_units": sum(per_method.values()),
                "rejected_calls": self.rejected.get(user, 0),
                "methods": {
                    m: {"units": u, "calls": self.calls[user][m]} for m, u in sorted(per_method.items())
                },
            }
        return {
            "users": users,
            "total_units": sum(u["total_units"] for u in users.values()),
            "http_requests": {**self.http_requests, "total": sum(self.http_requests.values())},
        }

    def reset(self) -> None:
        self.units.clear()
        self.calls.clear()
        self.rejected.clear()
        self.http_requests.clear()
        self._window.clear()
