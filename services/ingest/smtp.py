"""The BCC-drop SMTP listener (aiosmtpd) within bounded memory: the token checked at RCPT, DATA streamed into a
spool (memory up to a small size, then a temporary file) with the limits applied while it arrives, R9 after DATA.

Memory is bounded by three settings: at most `max_sessions` connections at once (more are told 421, try later),
each holding at most `spool_memory_bytes` of its drop in memory (the rest is on disk), and at most
`max_concurrent_drops` drops read back and checked at once (others wait their turn, their content still spooled).
Every refusal that names a location (a declared SIZE over the limit at RCPT, a line too long, too much data or a
header too large in DATA, and every R9 check) is written to the drop log by the admission (R16). The listener
offers STARTTLS when given a certificate (files a Kubernetes Secret mounts; re-read when they change).

It runs on the service's own event loop (not aiosmtpd's Controller thread), so the admission's ports can use the
service's asyncio clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.ingest.domain.bcc import (
    DropPolicy,
    DropRefused,
    header_too_large,
    line_too_long,
    too_large,
)
from services.ingest.drop_spool import (
    DATA_START,
    DataReceiver,
    DataRefusal,
    ReceivedData,
    SpoolLimits,
    end_of_data,
)
from services.runtime.instruments import instruments

log = logging.getLogger(__name__)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("mailsync.ingest.smtp")


def _reply_code(reply: str) -> int:
    return int(reply[:3]) if reply[:3].isdigit() else 0


def _drop_outcome(reply: str) -> str:
    """accepted, temporary (4xx: the sender retries) or refused (5xx)."""
    code = _reply_code(reply)
    return "accepted" if code // 100 == 2 else "temporary" if code // 100 == 4 else "refused"


_ACCEPTED = "250 2.0.0 Logged into the CRM"
_TEMPORARY_FAILURE = "451 4.3.0 The drop could not be recorded just now; please try again later"
_BUSY = "451 4.3.2 Too many drops are being recorded just now; please try again later"
_TOO_MANY_SESSIONS = "421 4.3.2 Too many connections to the BCC-drop listener; please try again later"
_READ_CHUNK = 64 * 1024
_DECLARED_SIZE = re.compile(r"^SIZE=(\d+)$", re.IGNORECASE)


class DropAdmission(Protocol):
    """What the listener needs of the admission (bcc_drop.BccDropAdmission)."""

    @property
    def policy(self) -> DropPolicy: ...

    async def location_for_recipient(self, envelope_recipient: str) -> str: ...

    async def admit(self, envelope_recipient: str, raw: bytes, *, envelope_sender: str = "") -> Any: ...

    async def log_refusal(
        self,
        envelope_recipient: str,
        head: bytes,
        envelope_sender: str,
        refused: DropRefused,
        *,
        size: int,
        content_digest: str = "",
    ) -> None: ...


@dataclass(frozen=True)
class ListenerLimits:
    """How much one process takes on at once (see the module doc for the memory this allows)."""

    max_sessions: int = 20
    max_concurrent_drops: int = 2
    # How long a received drop waits for its turn before the client is told to try again later.
    drop_wait_seconds: float = 300.0
    spool_memory_bytes: int = 1024 * 1024
    spool_directory: Path | None = None
    max_line_bytes: int = 8192
    max_header_bytes: int = 256 * 1024
    max_header_fields: int = 1000
    idle_timeout_seconds: float = 60.0


class CertificateFiles:
    """A server TLS context from PEM files, rebuilt when either file changes (a rotated Secret is picked up
    without a restart)."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self._certificate = certificate
        self._key = key
        self._loaded: tuple[tuple[float, float], ssl.SSLContext] | None = None

    def context(self) -> ssl.SSLContext:
        stamp = (os.stat(self._certificate).st_mtime, os.stat(self._key).st_mtime)
        if self._loaded is None or self._loaded[0] != stamp:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self._certificate, self._key)
            self._loaded = (stamp, context)
        return self._loaded[1]


class SessionGate:
    """Counts the open SMTP sessions of the process."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.active = 0
        self.turned_away = 0

    def enter(self) -> bool:
        if self.active >= self.max_sessions:
            self.turned_away += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class BccDropHandler:
    """aiosmtpd handler: every reply names why a drop was refused, and every refusal with a location is logged."""

    def __init__(self, admission: DropAdmission, limits: ListenerLimits) -> None:
        self._admission = admission
        self._limits = limits
        self._turns = asyncio.Semaphore(limits.max_concurrent_drops)

    @property
    def policy(self) -> DropPolicy:
        return self._admission.policy

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            await self._admission.location_for_recipient(address)
        except DropRefused as refused:
            log.info("bcc drop recipient refused at RCPT: %s", refused.reason.value)
            return refused.smtp_reply
        except Exception:
            # The sending MTA retries a 4xx later; internals never leak into the reply.
            log.exception("bcc drop recipient could not be checked")
            return _TEMPORARY_FAILURE
        declared = _declared_size(envelope.mail_options)
        if declared is not None and declared > self.policy.max_message_bytes:
            # Refused here rather than at MAIL FROM, where no location is known yet to log it for (R16).
            return await self._refuse(address, b"", envelope, too_large(self.policy), size=declared)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_received(self, session: Session, envelope: Envelope, received: ReceivedData) -> str:
        """The reply to a complete DATA transaction."""
        if received.refusal is not None:
            refused = self._refusal(received.refusal)
            replies = [
                await self._refuse(recipient, received.head, envelope, refused, size=received.size)
                for recipient in envelope.rcpt_tos
            ]
            return replies[0] if replies else refused.smtp_reply
        try:
            async with asyncio.timeout(self._limits.drop_wait_seconds):
                await self._turns.acquire()
        except TimeoutError:
            log.warning(
                "bcc drop waited %.0f s for its turn; the client retries", self._limits.drop_wait_seconds
            )
            return _BUSY
        try:
            raw = await asyncio.to_thread(received.read_all)
            return await self._admit_all(envelope, raw)
        finally:
            self._turns.release()

    async def _admit_all(self, envelope: Envelope, raw: bytes) -> str:
        refusals: list[DropRefused] = []
        accepted = 0
        for recipient in envelope.rcpt_tos:
            try:
                await self._admission.admit(recipient, raw, envelope_sender=envelope.mail_from or "")
                accepted += 1
            except DropRefused as refused:
                refusals.append(refused)
            except Exception:
                log.exception("bcc drop could not be handed over")
                return _TEMPORARY_FAILURE
        if accepted or not refusals:
            return _ACCEPTED
        return refusals[0].smtp_reply

    def _refusal(self, refusal: DataRefusal) -> DropRefused:
        if refusal is DataRefusal.TOO_LARGE:
            return too_large(self.policy)
        if refusal is DataRefusal.LINE_TOO_LONG:
            return line_too_long(self._limits.max_line_bytes)
        return header_too_large()

    async def _refuse(
        self, recipient: str, head: bytes, envelope: Envelope, refused: DropRefused, *, size: int
    ) -> str:
        log.info("bcc drop refused during the SMTP session: %s", refused.reason.value)
        try:
            await self._admission.log_refusal(recipient, head, envelope.mail_from or "", refused, size=size)
        except Exception:
            log.exception("a refused bcc drop could not be logged")
            return _TEMPORARY_FAILURE
        return refused.smtp_reply


def _declared_size(mail_options: list[str]) -> int | None:
    for option in mail_options:
        match = _DECLARED_SIZE.match(option)
        if match is not None:
            return int(match.group(1))
    return None


class DropSmtp(SMTP):
    """aiosmtpd's SMTP with the session cap, SIZE checked at RCPT, and DATA streamed into a spool."""

    def __init__(
        self, handler: BccDropHandler, *, gate: SessionGate, limits: ListenerLimits, **options: Any
    ) -> None:
        super().__init__(handler, data_size_limit=handler.policy.max_message_bytes, **options)
        self._drop_handler = handler
        self._gate = gate
        self._drop_wait_seconds = limits.drop_wait_seconds
        self._spool_limits = SpoolLimits(
            max_bytes=handler.policy.max_message_bytes,
            max_line_bytes=limits.max_line_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_header_fields=limits.max_header_fields,
            memory_bytes=limits.spool_memory_bytes,
            directory=limits.spool_directory,
        )

    async def _handle_client(self) -> None:
        if not self._gate.enter():
            log.warning(
                "bcc drop listener at its %d sessions; a connection was told to retry",
                self._gate.max_sessions,
            )
            await self.push(_TOO_MANY_SESSIONS)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            self._gate.leave()

    async def smtp_MAIL(self, arg: str | None) -> None:
        # SIZE is advertised and enforced, but a declared size is refused at RCPT (see BccDropHandler).
        limit, self.data_size_limit = self.data_size_limit, None
        try:
            await super().smtp_MAIL(arg)
        finally:
            self.data_size_limit = limit

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        receiver = DataReceiver(self._spool_limits)
        try:
            await self._receive(receiver)
        except BaseException:
            receiver.discard()
            raise
        received = receiver.finish()
        # The client now waits for the answer to its final dot (RFC 5321 4.5.3.2.6 allows it 10 minutes): no idle
        # timeout while the drop waits for its turn and is checked.
        self._reset_timeout(self._drop_wait_seconds + 60)
        try:
            with _tracer().start_as_current_span(
                "smtp DATA",
                kind=SpanKind.SERVER,
                attributes={
                    "network.protocol.name": "smtp",
                    "mailsync.smtp.recipients": len(self.envelope.rcpt_tos),
                },
            ) as span:
                status = await self._drop_handler.handle_received(self.session, self.envelope, received)
                span.set_attribute("mailsync.smtp.reply_code", _reply_code(status))
            instruments().smtp_drops.add(1, {"mailsync.outcome": _drop_outcome(status)})
        finally:
            received.close()
            self._reset_timeout()
        self._set_post_data_state()
        await self.push(status)

    async def _receive(self, receiver: DataReceiver) -> None:
        """Reads the DATA content up to its end-of-data line; what the client sent after it (pipelining) goes
        back to the reader for the next command."""
        tail = DATA_START
        while True:
            chunk = await self._reader.read(_READ_CHUNK)
            if not chunk:
                raise ConnectionResetError("the client closed the connection during DATA")
            self._reset_timeout()
            found = end_of_data(tail, chunk)
            if found is not None:
                content_end, rest = found
                receiver.feed_last(chunk, content_end)
                if rest < len(chunk):
                    self._reader._buffer[0:0] = chunk[rest:]  # type: ignore[attr-defined]
                return
            receiver.feed(chunk)
            tail = chunk[-4:] if len(chunk) >= 4 else (tail + chunk)[-4:]
            # read() returns at once while the client's bytes are buffered: without this, a fast client's whole
            # drop would be received in one step of the event loop (a second and more for 25 MB).
            await asyncio.sleep(0)


async def start_smtp_listener(
    admission: DropAdmission,
    *,
    host: str,
    port: int,
    hostname: str | None = None,
    limits: ListenerLimits | None = None,
    tls: CertificateFiles | None = None,
    require_starttls: bool = False,
) -> asyncio.Server:
    """Listen for drops on (host, port); port 0 picks a free port. Close the returned server to stop."""
    limits = limits or ListenerLimits()
    handler = BccDropHandler(admission, limits)
    gate = SessionGate(limits.max_sessions)
    loop = asyncio.get_running_loop()

    def session() -> DropSmtp:
        return DropSmtp(
            handler,
            gate=gate,
            limits=limits,
            hostname=hostname,
            decode_data=False,
            timeout=limits.idle_timeout_seconds,
            tls_context=tls.context() if tls is not None else None,
            require_starttls=require_starttls and tls is not None,
            loop=loop,
        )

    factory: Callable[[], DropSmtp] = session
    return await loop.create_server(factory, host=host, port=port)
