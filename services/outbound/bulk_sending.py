"""Bulk and workflow email through the location's SMTP provider (R13): never counted against the Gmail quota, not
affected by a connection's state. SMTP has no Sent folder to look in, so a handover of unknown outcome (the
connection broke after DATA) stays UNKNOWN for a person to decide, never retried."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from services.outbound import store
from services.outbound.domain.email import EmailAddress, MessageLimits
from services.outbound.domain.send_state import NextStep, SendState
from services.outbound.drafts import SendRequest, build_email, new_row, staged_attachments
from services.outbound.mime import BccHandling
from services.outbound.smtp import SmtpNotSent, SmtpOutcomeUnknown, SmtpProvider, send_via_smtp
from services.outbound.store import SendRecord
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.errors import FailedPrecondition


@dataclass(frozen=True)
class BulkSender:
    """The location's SMTP provider and the From address bulk and workflow email carries (R13)."""

    provider: SmtpProvider
    sender: EmailAddress


class BulkSending:
    def __init__(
        self,
        db: Database,
        bulk: BulkSender | None,
        *,
        clock: Clock,
        message_id_domain: str,
        limits: MessageLimits,
        owner: str,
        lease: dt.timedelta,
    ) -> None:
        self._db = db
        self._bulk = bulk
        self._clock = clock
        self._message_id_domain = message_id_domain
        self._limits = limits
        self._owner = owner
        self._lease = lease

    async def send(self, request: SendRequest) -> SendRecord | None:
        """Hands the email to the provider once; None when the request id was used before (replay it)."""
        if self._bulk is None:
            raise FailedPrecondition(
                "no SMTP provider is configured for bulk and workflow email", kind=request.kind.value
            )
        now = self._clock.now()
        staged = await staged_attachments(self._db, request, self._limits, now)
        send_id = uuid.uuid4().hex
        built = build_email(
            request,
            self._bulk.sender,
            staged,
            now,
            bcc=BccHandling.ENVELOPE_ONLY,
            message_id_domain=self._message_id_domain,
            limits=self._limits,
            send_id=send_id,
        )
        values = new_row(request, built, send_id, now, owner=self._owner, lease_until=now + self._lease) | {
            "state": SendState.SENDING.value,
            "next_step": NextStep.AWAIT_GMAIL_ANSWER.value,
            "mailbox_email": self._bulk.sender.email,
            "call_started_at": now,
        }
        async with self._db.write() as session:
            if not await store.insert_send(session, values):
                return None
        record = store.record_from_values(values)
        try:
            await send_via_smtp(self._bulk.provider, built)
        except SmtpOutcomeUnknown as error:
            return await self.settle(record, state=SendState.UNKNOWN, reason=str(error))
        except SmtpNotSent as error:
            return await self.settle(record, state=SendState.FAILED, reason=error.reason)
        return await self.settle(record, state=SendState.SENT, reason="")

    async def settle(self, record: SendRecord, *, state: SendState, reason: str) -> SendRecord:
        now = self._clock.now()
        async with self._db.write() as session:
            settled = await store.update_send_returning(
                session,
                record.send_id,
                state=state.value,
                next_step=NextStep.NOTHING.value,
                reason=reason,
                sent_at=now if state is SendState.SENT else None,
                final_rfc_message_id=record.rfc_message_id if state is SendState.SENT else "",
                raw=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        assert settled is not None
        return settled
