"""The sandbox's switchable behaviours and its clock, changed at run time through the admin API."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from sandbox.errors import bad_request

SENT_COPY_BEFORE_RESPONSE = "before_response"
SENT_COPY_AFTER_RESPONSE = "after_response"
PUSH_OVER_RATE_DROP = "drop"
PUSH_OVER_RATE_DELAY = "delay"


@dataclass
class SandboxSettings:
    """Every knob has a default that behaves like Gmail as far as its documentation says."""

    project_id: str = "sandbox-project"
    # Gmail generates its own Message-ID for API sends; False keeps the client's header.
    replace_message_id: bool = True
    # "before_response": the SENT copy is in history (and pushed) before messages.send answers.
    sent_copy_timing: str = SENT_COPY_BEFORE_RESPONSE
    sent_copy_delay_ms: int = 200
    # How long an echo-first send waits for its push (pushes are paced per mailbox); 0 = history only.
    echo_first_push_wait_s: float = 2.0
    # Gmail's search index lags: a message shows in `q` searches (messages.list, threads.list) only this long
    # after it was stored. 0 = at once.
    search_index_lag_ms: int = 0
    # "legacy" (2023 page: send 100, get 5) or "2026" (get 20, threads.get 40).
    quota_table: str = "legacy"
    enforce_quota: bool = False
    # Per-user rate when enforce_quota is on; None picks the table's documented figure.
    quota_units_per_window: int | None = None
    quota_window_seconds: float | None = None
    # Per-user concurrent requests when enforce_quota is on ("around 10" in public reports).
    enforced_concurrency_per_user: int = 10
    # Parts with a filename larger than this are served by attachmentId; other parts above the second limit too.
    attachment_inline_max_bytes: int = 0
    body_inline_max_bytes: int = 1_000_000
    access_token_lifetime_s: int = 3599
    watch_lifetime_s: int = 7 * 24 * 3600
    push_min_interval_s: float = 1.0
    # A change within push_min_interval_s of the mailbox's last notification: "drop" never notifies it, as Gmail
    # documents ("notifications above that rate will be dropped"); "delay" holds it back and sends one coalesced
    # notification when the interval ends (kinder than Gmail: a client that misses the drop passes with it).
    push_over_rate: str = PUSH_OVER_RATE_DROP
    push_retry_initial_s: float = 0.2
    push_retry_max_s: float = 10.0
    push_max_attempts: int = 8
    # Share of notifications Pub/Sub never delivers (Google documents pushes as best effort); 0 = none dropped.
    # Drawn from the sandbox's seeded random source, so a seed replays the same drops.
    push_drop_share: float = 0.0
    history_gap_max: int = 20

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise bad_request(f"Unknown setting: {name}")
            setattr(self, name, value)
        if self.quota_table not in ("legacy", "2026"):
            raise bad_request("quota_table must be 'legacy' or '2026'")
        if self.sent_copy_timing not in (SENT_COPY_BEFORE_RESPONSE, SENT_COPY_AFTER_RESPONSE):
            raise bad_request("sent_copy_timing must be 'before_response' or 'after_response'")
        if self.push_over_rate not in (PUSH_OVER_RATE_DROP, PUSH_OVER_RATE_DELAY):
            raise bad_request("push_over_rate must be 'drop' or 'delay'")


class SandboxClock:
    """Wall time plus an offset that tests move forward (token expiry, send windows) without sleeping."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> float:
        return time.time() + self.offset_s

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds
