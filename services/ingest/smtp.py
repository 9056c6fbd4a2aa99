"""The BCC-drop SMTP listener (aiosmtpd): size enforced by the session, token checked at RCPT, R9 on DATA.

It runs on the service's own event loop (not aiosmtpd's Controller thread), so the admission's ports can
use the service's asyncio clients.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from services.ingest.domain.bcc import DropPolicy, DropRefused

log = logging.getLogger(__name__)

_ACCEPTED = "250 2.0.0 Logged into the CRM"
_TEMPORARY_FAILURE = "451 4.3.0 The drop could not be recorded just now; please try again later"


class DropAdmission(Protocol):
    """What the listener needs of the admission (BccDropAdmission, or the service's logging wrapper)."""

    @property
    def policy(self) -> DropPolicy: ...

    async def location_for_recipient(self, envelope_recipient: str) -> str: ...

    async def admit(self, envelope_recipient: str, raw: bytes) -> Any: ...


class BccDropHandler:
    """aiosmtpd handler: every reply names why a drop was refused."""

    def __init__(self, admission: DropAdmission) -> None:
        self._admission = admission

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
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        refusals: list[DropRefused] = []
        accepted = 0
        for recipient in envelope.rcpt_tos:
            try:
                await self._admission.admit(recipient, raw)
                accepted += 1
            except DropRefused as refused:
                refusals.append(refused)
            except Exception:
                log.exception("bcc drop could not be handed over")
                return _TEMPORARY_FAILURE
        if accepted or not refusals:
            return _ACCEPTED
        return refusals[0].smtp_reply


async def start_smtp_listener(
    admission: DropAdmission, *, host: str, port: int, hostname: str | None = None
) -> asyncio.Server:
    """Listen for drops on (host, port); port 0 picks a free port. Close the returned server to stop."""
    handler = BccDropHandler(admission)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(
            handler,
            # Advertised as SIZE and enforced while DATA streams in (552 beyond it).
            data_size_limit=admission.policy.max_message_bytes,
            hostname=hostname,
            decode_data=False,
            timeout=60,
            loop=loop,
        ),
        host=host,
        port=port,
    )
