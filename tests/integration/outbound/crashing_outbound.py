"""An outbound process that the test kills -9 at a fault point of its choice and restarts, and a CRM client that
retries each send with its request id until it is final, as the crash tests of outbound need them.

Every fault point is armed with `:once` on a state folder whose marker files exist from the start (disarmed);
removing a point's marker arms it for whichever send passes it next (services.runtime.faults), which writes the
marker again as it kills the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mailsync.v1 import outbound_pb2
from services.outbound.sending import AFTER_GMAIL_ANSWER, AFTER_SENT_SEARCH, BEFORE_GMAIL_SEND
from services.outbound.settings import OutboundSettings
from services.runtime.faults import FAULTS_VARIABLE, STATE_DIR_VARIABLE
from tests.fixtures.outbound_world import OutboundWorld
from tests.fixtures.services import ServiceProcess

POINTS = (BEFORE_GMAIL_SEND, AFTER_GMAIL_ANSWER, AFTER_SENT_SEARCH)
# What a caller sees while the process it talks to is dead or not yet restarted.
_PROCESS_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass
class CrashingOutbound:
    """One outbound process at a time, killed at armed fault points and restarted by `restart_after_crash`."""

    world: OutboundWorld
    start_process: Callable[..., Awaitable[ServiceProcess]]
    settings: OutboundSettings
    folder: Path
    process: ServiceProcess | None = None
    kills: list[str] = field(default_factory=list)
    stubs: dict[int, Any] = field(default_factory=dict)

    @property
    def _faults(self) -> Path:
        return self.folder / "faults"

    async def start(self) -> ServiceProcess:
        self._faults.mkdir(parents=True, exist_ok=True)
        if self.process is None:
            for point in POINTS:
                (self._faults / f"{point}.fired").touch()
        env = {
            FAULTS_VARIABLE: ",".join(f"{point}:once" for point in POINTS),
            STATE_DIR_VARIABLE: str(self._faults),
        }
        self.process = await self.start_process(self.settings, self.folder / "outbound.log", **env)
        return self.process

    def arm(self, point: str) -> None:
        (self._faults / f"{point}.fired").unlink()

    def armed(self, point: str) -> bool:
        return not (self._faults / f"{point}.fired").exists()

    def stub(self) -> Any:
        assert self.process is not None
        port = self.process.port
        if port not in self.stubs:
            self.stubs[port] = self.world.stub(port=port)
        return self.stubs[port]

    async def restart_after_crash(
        self, point: str, *, arm_next: str | None = None, within: float = 120.0
    ) -> None:
        """Waits until the armed `point` killed the process (exit -9), then starts a new one (with `arm_next`
        armed from its first moment, e.g. to kill it again during its startup recovery)."""
        assert self.process is not None
        code = await self.process.exited(within=within)
        assert code == -9, (
            f"outbound exited with {code}, not killed at {point}: {self.process.log_text()[-3000:]}"
        )
        assert not self.armed(point), f"the process died but {point} did not fire"
        self.kills.append(point)
        await self._restart(arm_next)

    async def _restart(self, arm_next: str | None) -> None:
        for attempt in range(3):
            if arm_next is not None:
                self.arm(arm_next)
            try:
                await self.start()
                return
            except RuntimeError:
                # Killed at `arm_next` before it answered its health check: that was the point; start again.
                if arm_next is None or self.armed(arm_next) or attempt == 2:
                    raise
                self.kills.append(arm_next)
                arm_next = None


async def send_until_final(
    outbound: CrashingOutbound, request: outbound_pb2.SendEmailRequest, *, within: float = 600.0
) -> outbound_pb2.Send:
    """SendEmail with the same request id until the send is SENT (through kills and restarts)."""
    async with asyncio.timeout(within):
        while True:
            try:
                answer = await outbound.stub().SendEmail(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _PROCESS_GONE:
                    raise
            else:
                if answer.send.state == outbound_pb2.SEND_STATE_SENT:
                    return answer.send
                assert answer.send.state != outbound_pb2.SEND_STATE_FAILED, answer.send
            await asyncio.sleep(0.2)
