"""Injected faults per Gmail method: shares of 429/403/500, added latency, a per-user concurrency cap, and
scripted next errors for deterministic tests."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.errors import (
    GoogleApiError,
    backend_error,
    bad_request,
    daily_limit_exceeded,
    too_many_concurrent,
    user_rate_exceeded,
    user_rate_limit_403,
)

_SCRIPTED = {
    "rateLimitExceeded": user_rate_exceeded,
    "tooManyConcurrent": too_many_concurrent,
    "userRateLimitExceeded": user_rate_limit_403,
    "backendError": backend_error,
    "dailyLimitExceeded": daily_limit_exceeded,
}


@dataclass
class FaultPlan:
    """Faults for one method id (e.g. `gmail.users.messages.get`) or `*` for every method."""

    rate_limit_share: float = 0.0
    user_rate_limit_share: float = 0.0
    backend_error_share: float = 0.0
    latency_ms: int = 0
    concurrency_cap: int | None = None
    next_errors: list[str] = field(default_factory=list)


class FaultInjector:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.plans: dict[str, FaultPlan] = {}
        self.injected: dict[str, int] = defaultdict(int)

    def configure(self, method: str, changes: dict[str, Any]) -> FaultPlan:
        plan = self.plans.get(method, FaultPlan())
        for name, value in changes.items():
            if not hasattr(plan, name):
                raise bad_request(f"Unknown fault field: {name}")
            setattr(plan, name, value)
        unknown = [e for e in plan.next_errors if e not in _SCRIPTED]
        if unknown:
            raise bad_request(f"Unknown scripted errors: {unknown}; known: {sorted(_SCRIPTED)}")
        self.plans[method] = plan
        return plan

    def clear(self) -> None:
        self.plans.clear()
        self.injected.clear()

    def _plans_for(self, method_id: str) -> list[FaultPlan]:
        return [p for key, p in ((method_id, self.plans.get(method_id)), ("*", self.plans.get("*"))) if p]

    def latency_s(self, method_id: str) -> float:
        return sum(p.latency_ms for p in self._plans_for(method_id)) / 1000

    def concurrency_cap(self, method_id: str) -> int | None:
        caps = [p.concurrency_cap for p in self._plans_for(method_id) if p.concurrency_cap]
        return min(caps) if caps else None

    def pick_error(self, method_id: str) -> GoogleApiError | None:
        for plan in self._plans_for(method_id):
            if plan.next_errors:
                reason = plan.next_errors.pop(0)
                self.injected[reason] += 1
                return _SCRIPTED[reason]()
            roll = self.rng.random()
            for share, factory, reason in (
                (plan.rate_limit_share, user_rate_exceeded, "rateLimitExceeded"),
                (plan.user_rate_limit_share, user_rate_limit_403, "userRateLimitExceeded"),
                (plan.backend_error_share, backend_error, "backendError"),
            ):
                if roll < share:
                    self.injected[reason] += 1
                    return factory()
                roll -= share
        return None

    def report(self) -> dict[str, Any]:
        return {"plans": {k: asdict(v) for k, v in self.plans.items()}, "injected": dict(self.injected)}
