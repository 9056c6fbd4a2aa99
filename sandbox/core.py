"""The sandbox's parts in one object, so that every HTTP surface (Gmail, OAuth, admin) sees the same world."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sandbox.faults import FaultInjector
from sandbox.grants import GrantRegistry
from sandbox.keys import SigningKey
from sandbox.push import PushService
from sandbox.quota import QuotaLedger
from sandbox.settings import SandboxClock, SandboxSettings
from sandbox.state import MailState


@dataclass
class SandboxCore:
    settings: SandboxSettings
    clock: SandboxClock
    rng: random.Random
    key: SigningKey
    mail: MailState
    grants: GrantRegistry
    push: PushService
    quota: QuotaLedger
    faults: FaultInjector

    @classmethod
    def create(cls, seed: int | None = None, key: SigningKey | None = None) -> SandboxCore:
        settings = SandboxSettings()
        clock = SandboxClock()
        rng = random.Random(seed)
        key = key or SigningKey.generate()
        mail = MailState(clock.now_ms, rng, settings.history_gap_max)
        push = PushService(settings, clock, key, rng)
        mail.listeners.append(push.on_change)
        return cls(
            settings=settings,
            clock=clock,
            rng=rng,
            key=key,
            mail=mail,
            grants=GrantRegistry(mail, clock.now_ms, settings.access_token_lifetime_s),
            push=push,
            quota=QuotaLedger(clock.now),
            faults=FaultInjector(rng),
        )

    def reset(self) -> None:
        """Back to an empty world with default settings; the signing key and push session stay."""
        self.settings.__init__()  # type: ignore[misc]
        self.clock.offset_s = 0.0
        self.mail.__init__(self.clock.now_ms, self.rng, self.settings.history_gap_max)  # type: ignore[misc]
        self.mail.listeners.append(self.push.on_change)
        self.grants.__init__(self.mail, self.clock.now_ms, self.settings.access_token_lifetime_s)  # type: ignore[misc]
        self.push.reset()
        self.quota.reset()
        self.faults.clear()
