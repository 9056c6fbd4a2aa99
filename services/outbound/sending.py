"""The send use case: an email from the CRM goes out once, through the user's Gmail (INDIVIDUAL) or the location's
SMTP provider (BULK, WORKFLOW), and its outcome is recorded with its events (R6, R10, R13, R14, R15).

An individual send is one transaction before Gmail (the send row SENDING, its ledger entry and the pending event)
and one after it (SENT with Gmail's ids and the Message-ID Gmail kept, and the sent event). A Gmail call without a
definite answer, or one interrupted by a crash, is never repeated blindly: the Sent folder is searched first, and
only a search that proves the message absent allows another call (services.outbound.domain.send_state).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from services.outbound import events, store
from services.outbound.connections import SenderMailbox
from services.outbound.domain.email import (
    Attachment,
    EmailAddress,
    MessageLimits,
    OutgoingEmail,
    ReplyTarget,
    new_message_id,
)
from services.outbound.domain.errors import AttachmentsTooLarge, InvalidEmail, QuotaCause, QuotaExceeded
from services.outbound.domain.quota import gmail_block_end
from services.outbound.domain.routing import SendKind, ledger_key
from services.outbound.domain.send_state import (
    FoundInSentFolder,
    GmailAccepted,
    GmailCallStarted,
    GmailIds,
    GmailNoAnswer,
    GmailRefused,
    NextStep,
    NotInSentFolder,
    SendProgress,
    SendState,
    SentFolderUnavailable,
    advance,
    after_restart,
    new_send,
)
from services.outbound.gmail_sends import (
    GmailMailboxes,
    SentFolderUnreadable,
    find_in_sent_folder,
    kept_message_id,
)
from services.outbound.ledger import SendLedger
from services.outbound.mime import BccHandling, BuiltMessage, build_message
from services.outbound.smtp import SmtpNotSent, SmtpOutcomeUnknown, SmtpProvider, send_via_smtp
from services.outbound.store import SendRecord
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.faults import fault_point
from services.runtime.gmail import GmailError, SendingLimitReached, SendOutcomeUnknown

log = logging.getLogger(__name__)

# Crash points for the kill -9 tests (services.runtime.faults).
BEFORE_GMAIL_SEND = "outbound.before_gmail_send"
AFTER_GMAIL_ANSWER = "outbound.after_gmail_answer"

_QUOTA_REASON = QuotaExceeded.reason
_REPLAY_POLL_SECONDS = 0.05


class SenderDirectory(Protocol):
    """What sending needs from the auth service (services.outbound.connections.AuthConnections)."""

    async def sender_for(self, location_id: str, user_id: str) -> SenderMailbox: ...

    async def access_token(self, mailbox_id: str) -> str: ...


@dataclass(frozen=True)
class SendRequest:
    request_id: str
    location_id: str
    user_id: str
    kind: SendKind
    to: tuple[EmailAddress, ...]
    subject: str
    cc: tuple[EmailAddress, ...] = ()
    bcc: tuple[EmailAddress, ...] = ()
    text_body: str = ""
    html_body: str = ""
    attachment_upload_ids: tuple[str, ...] = ()
    conversation_id: str = ""
    thread_id: str = ""
    reply_gmail_thread_id: str = ""
    reply_to_rfc_message_id: str = ""
    reply_references: tuple[str, ...] = ()


@dataclass(frozen=True)
class BulkSender:
    """The location's SMTP provider and the From address bulk and workflow email carries (R13)."""

    provider: SmtpProvider
    sender: EmailAddress


@dataclass(frozen=True)
class SendingConfig:
    message_id_domain: str
    limits: MessageLimits = field(default_factory=MessageLimits)
    workspace_daily_limit: int = 2000
    lease: dt.timedelta = dt.timedelta(minutes=2)
    sent_search_grace: dt.timedelta = dt.timedelta(seconds=5)
    max_gmail_calls: int = 3
    # Longest time a replayed request waits for the process that owns the send to settle it.
    replay_wait: dt.timedelta = dt.timedelta(seconds=30)
    # Sends one process works on at once; more wait their turn instead of timing out on the connection pool.
    max_concurrent_sends: int = 32
    owner: str = field(default_factory=lambda: f"outbound-{uuid.uuid4().hex[:12]}")


def _progress(record: SendRecord) -> SendProgress:
    gmail = GmailIds(record.gmail_message_id, record.gmail_thread_id) if record.gmail_message_id else None
    return SendProgress(
        state=SendState(record.state),
        next_step=NextStep(record.next_step),
        gmail_calls=record.gmail_calls,
        gmail=gmail,
        reason=record.reason,
    )


class OutboundSender:
    """Sends, replays and recovers sends; one per process, shared by every RPC and the recovery loop."""

    def __init__(
        self,
        db: Database,
        ledger: SendLedger,
        directory: SenderDirectory,
        gmail: GmailMailboxes,
        config: SendingConfig,
        *,
        bulk: BulkSender | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._directory = directory
        self._gmail = gmail
        self._config = config
        self._bulk = bulk
        self._clock = clock or SystemClock()
        self._sleep = sleep
        # The daily limit this process last wrote per mailbox, so the ledger row is only touched on a change.
        self._limits_written: dict[str, int | None] = {}
        self._turns = asyncio.Semaphore(config.max_concurrent_sends)

    # -- entry points ----------------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendRecord:
        """Sends once per (location, request id); a repeated request answers with the first one's outcome."""
        _require_ids(request)
        async with self._turns:
            async with self._db.read() as session:
                existing = await store.send_by_request(session, request.location_id, request.request_id)
            if existing is not None:
                return await self._replay(existing)
            if request.kind is SendKind.INDIVIDUAL:
                return await self._send_individual(request)
            return await self._send_bulk(request)

    async def get(self, location_id: str, send_id: str) -> SendRecord:
        async with self._db.read() as session:
            record = await store.get_send(session, send_id)
        if record is None or record.location_id != location_id:
            raise NotFound(f"no send {send_id} in location {location_id}", send_id=send_id)
        return record

    async def recover(self, send_id: str) -> SendRecord:
        """Settles a send its process left unsettled (crash, or UNKNOWN): searches Sent before any new call."""
        now = self._clock.now()
        async with self._db.write() as session:
            record = await store.take_lease(
                session, send_id, owner=self._config.owner, now=now, until=now + self._config.lease
            )
            if record is None:
                current = await store.get_send(session, send_id)
        if record is None:
            assert current is not None
            return current
        if record.kind != SendKind.INDIVIDUAL.value:
            # SMTP has no Sent folder to look in: a handover of unknown outcome stays UNKNOWN for a person.
            return await self._settle(
                record, state=SendState.UNKNOWN, reason=record.reason or "SMTP outcome unknown"
            )
        progress = after_restart(_progress(record))
        return await self._resolve(record, progress)

    async def recover_due(self, *, limit: int = 50) -> int:
        """One recovery pass over the sends whose owner's lease ran out; returns how many it looked at."""
        async with self._db.read() as session:
            due = await store.sends_to_recover(session, now=self._clock.now(), limit=limit)
        for send_id in due:
            try:
                await self.recover(send_id)
            except Exception:
                log.exception("recovering a send failed", extra={"send_id": send_id})
        return len(due)

    # -- individual: Gmail -----------------------------------------------------------------------------------

    async def _send_individual(self, request: SendRequest) -> SendRecord:
        staged = await self._attachments(request)
        sender = await self._directory.sender_for(request.location_id, request.user_id)
        # Fetched before anything is recorded: a mailbox auth cannot serve is refused with nothing sent.
        await self._directory.access_token(sender.mailbox_id)
        now = self._clock.now()
        built = self._build(
            request, EmailAddress(sender.mailbox_email, sender.display_name), staged, now, BccHandling.HEADER
        )
        send_id = uuid.uuid4().hex
        key = ledger_key(request.location_id, request.request_id)
        pending = events.pending_send(
            events.SendContext(
                send_id=send_id,
                request_id=request.request_id,
                location_id=request.location_id,
                user_id=request.user_id,
                connection_id=sender.connection_id,
                mailbox_id=sender.mailbox_id,
                mailbox_email=sender.mailbox_email,
                conversation_id=request.conversation_id,
                thread_id=request.thread_id,
                gmail_thread_id=request.reply_gmail_thread_id,
                create_time=now,
            ),
            built,
            [
                events.AttachmentFacts(a.upload_id, a.filename, a.content_type, a.size_bytes, a.sha256)
                for a in staged
            ],
        )
        progress = advance(new_send(), GmailCallStarted())
        values = self._new_row(request, built, send_id, now) | {
            "connection_id": sender.connection_id,
            "mailbox_id": sender.mailbox_id,
            "mailbox_email": sender.mailbox_email,
            "ledger_key": key,
            "state": progress.state.value,
            "next_step": progress.next_step.value,
            "gmail_calls": progress.gmail_calls,
            "pending_event": pending.SerializeToString(),
            "call_started_at": now,
        }
        async with self._db.write() as session:
            created = await store.insert_send(session, values)
            if created:
                await self._admit(session, sender, key, len(built.envelope_recipients))
                await events.stage_pending(session, pending)
        if not created:
            return await self._replay_by_request(request)
        async with self._db.read() as session:
            record = await store.get_send(session, send_id)
        assert record is not None
        return await self._call_gmail(record, progress)

    async def _admit(self, session: AsyncSession, sender: SenderMailbox, key: str, recipients: int) -> None:
        wanted = sender.daily_send_limit or (self._config.workspace_daily_limit if sender.workspace else None)
        if self._limits_written.get(sender.mailbox_id) != wanted:
            await self._ledger.set_daily_limit(session, mailbox_id=sender.mailbox_id, daily_limit=wanted)
            self._limits_written[sender.mailbox_id] = wanted
        await self._ledger.admit(
            session, mailbox_id=sender.mailbox_id, idempotency_key=key, recipients=recipients
        )

    async def _call_gmail(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        if not await self._still_owned(record):
            # Recovery in another process took the send over (this one was too slow): only the owner calls Gmail.
            return await self._reload(record.send_id)
        client = self._gmail.client_for(record.mailbox_id)
        fault_point(BEFORE_GMAIL_SEND)
        try:
            assert record.raw is not None
            answer = await client.send_raw(record.raw, thread_id=record.reply_gmail_thread_id or None)
        except SendingLimitReached as error:
            raise await self._gmail_blocked(record, error) from error
        except SendOutcomeUnknown as error:
            return await self._resolve(record, advance(progress, GmailNoAnswer(error.message)))
        except GmailError as error:
            return await self._settle_refused(record, advance(progress, GmailRefused(error.message)))
        except Exception as error:
            # Anything else after the request may have left (a bug, a cancelled call) is an unknown outcome.
            log.exception("unexpected failure of messages.send")
            return await self._resolve(record, advance(progress, GmailNoAnswer(repr(error))))
        gmail = GmailIds(message_id=answer["id"], thread_id=answer.get("threadId", ""))
        return await self._record_sent(record, advance(progress, GmailAccepted(gmail)))

    async def _still_owned(self, record: SendRecord) -> bool:
        """Renews this process's lease right before a Gmail call; False when another process holds the send."""
        now = self._clock.now()
        held_until = record.lease_expires_at
        if (
            record.lease_owner == self._config.owner
            and held_until
            and held_until - now > self._config.lease / 2
        ):
            # Nobody takes a send over before its lease ends, so a lease this fresh needs no round trip.
            return True
        async with self._db.write() as session:
            return await store.renew_lease(
                session, record.send_id, owner=self._config.owner, until=now + self._config.lease
            )

    async def _record_sent(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        assert progress.gmail is not None
        client = self._gmail.client_for(record.mailbox_id)
        final_id = await kept_message_id(client, progress.gmail.message_id, record.rfc_message_id)
        fault_point(AFTER_GMAIL_ANSWER)
        now = self._clock.now()
        async with self._db.write() as session:
            changed = await store.update_send(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                state=SendState.SENT.value,
                next_step=NextStep.NOTHING.value,
                gmail_calls=progress.gmail_calls,
                reason="",
                gmail_message_id=progress.gmail.message_id,
                gmail_thread_id=progress.gmail.thread_id,
                final_rfc_message_id=final_id,
                sent_at=now,
                raw=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            if changed:
                assert record.pending_event is not None
                await events.stage_sent(
                    session,
                    record.pending_event,
                    gmail_message_id=progress.gmail.message_id,
                    gmail_thread_id=progress.gmail.thread_id,
                    final_rfc_message_id=final_id,
                    sent_time=now,
                )
        return await self._reload(record.send_id)

    async def _resolve(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        """From SEARCH_SENT_FOLDER: found -> SENT; proven absent -> one more call; unreadable -> UNKNOWN."""
        if progress.next_step is NextStep.CALL_GMAIL:
            progress = advance(progress, GmailCallStarted())
            owned = await self._record_call_started(record, progress)
            if owned is None:
                return await self._reload(record.send_id)
            return await self._call_gmail(owned, progress)
        while progress.next_step is NextStep.SEARCH_SENT_FOLDER:
            await self._wait_for_search_grace(record)
            try:
                copy = await find_in_sent_folder(
                    self._gmail.client_for(record.mailbox_id),
                    rfc_message_id=record.rfc_message_id,
                    recipients=record.recipients,
                    subject=record.subject,
                    date=record.message_date,
                )
            except SentFolderUnreadable as error:
                progress = advance(progress, SentFolderUnavailable(str(error)))
                return await self._park_unknown(record, progress)
            if copy is not None:
                return await self._record_sent(record, advance(progress, FoundInSentFolder(copy.gmail)))
            progress = advance(progress, NotInSentFolder(), max_gmail_calls=self._config.max_gmail_calls)
            if progress.state is SendState.FAILED:
                return await self._settle_refused(record, progress)
            progress = advance(progress, GmailCallStarted())
            owned = await self._record_call_started(record, progress)
            if owned is None:
                return await self._reload(record.send_id)
            return await self._call_gmail(owned, progress)
        raise AssertionError(f"cannot resolve a send at {progress.next_step}")

    async def _wait_for_search_grace(self, record: SendRecord) -> None:
        started = record.call_started_at or record.created_at
        remaining = (started + self._config.sent_search_grace - self._clock.now()).total_seconds()
        if remaining > 0:
            await self._sleep(remaining)  # type: ignore[misc]

    async def _record_call_started(self, record: SendRecord, progress: SendProgress) -> SendRecord | None:
        """Records the next call while this process still holds the send (None when another took it over: a slow
        search outlived the lease, so its "not there" may already be stale)."""
        now = self._clock.now()
        async with self._db.write() as session:
            owned = await store.update_send(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self._config.owner,
                state=progress.state.value,
                next_step=progress.next_step.value,
                gmail_calls=progress.gmail_calls,
                reason="",
                call_started_at=now,
                lease_expires_at=now + self._config.lease,
            )
        return await self._reload(record.send_id) if owned else None

    async def _park_unknown(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        # The lease ends after the grace, so the recovery loop searches again soon, in whichever process.
        now = self._clock.now()
        async with self._db.write() as session:
            await store.update_send(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self._config.owner,
                state=progress.state.value,
                next_step=progress.next_step.value,
                reason=progress.reason,
                lease_owner=None,
                lease_expires_at=now + self._config.sent_search_grace,
            )
        return await self._reload(record.send_id)

    async def _settle_refused(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        """Gmail certainly did not send it: the slot goes back to the window and `failed` is published."""
        now = self._clock.now()
        async with self._db.write() as session:
            await self._ledger.release(session, idempotency_key=record.ledger_key)
            changed = await store.update_send(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                state=SendState.FAILED.value,
                next_step=NextStep.NOTHING.value,
                gmail_calls=progress.gmail_calls,
                reason=progress.reason,
                raw=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            if changed:
                await events.stage_failed(
                    session,
                    send_id=record.send_id,
                    mailbox_id=record.mailbox_id,
                    location_id=record.location_id,
                    reason=progress.reason,
                    fail_time=now,
                )
        return await self._reload(record.send_id)

    async def _gmail_blocked(self, record: SendRecord, error: SendingLimitReached) -> QuotaExceeded:
        """Gmail's own sending limit (R14): closes the mailbox until Gmail's time; returns the refusal to raise."""
        now = self._clock.now()
        until = error.retry_at or gmail_block_end(error.message, now)
        async with self._db.write() as session:
            until = await self._ledger.record_gmail_block(
                session, mailbox_id=record.mailbox_id, blocked_until=until
            )
            await self._ledger.release(session, idempotency_key=record.ledger_key)
            changed = await store.update_send(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                state=SendState.FAILED.value,
                next_step=NextStep.NOTHING.value,
                reason=f"Gmail's sending limit: {error.message}",
                error_reason=_QUOTA_REASON,
                retry_time=until,
                raw=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            if changed:
                await events.stage_failed(
                    session,
                    send_id=record.send_id,
                    mailbox_id=record.mailbox_id,
                    location_id=record.location_id,
                    reason=f"Gmail's sending limit until {until.isoformat()}",
                    fail_time=now,
                )
        return self._gmail_block_error(record.mailbox_id, until)

    def _gmail_block_error(self, mailbox_id: str, until: dt.datetime) -> QuotaExceeded:
        return QuotaExceeded(
            mailbox_id=mailbox_id,
            retry_time=until,
            cause=QuotaCause.GMAIL_BLOCK,
            daily_limit=self._ledger.default_daily_limit,
        )

    # -- bulk and workflow: the location's SMTP provider ----------------------------------------------------

    async def _send_bulk(self, request: SendRequest) -> SendRecord:
        if self._bulk is None:
            raise FailedPrecondition(
                "no SMTP provider is configured for bulk and workflow email", kind=request.kind.value
            )
        staged = await self._attachments(request)
        now = self._clock.now()
        built = self._build(request, self._bulk.sender, staged, now, BccHandling.ENVELOPE_ONLY)
        send_id = uuid.uuid4().hex
        values = self._new_row(request, built, send_id, now) | {
            "state": SendState.SENDING.value,
            "next_step": NextStep.AWAIT_GMAIL_ANSWER.value,
            "mailbox_email": self._bulk.sender.email,
            "call_started_at": now,
        }
        async with self._db.write() as session:
            created = await store.insert_send(session, values)
        if not created:
            return await self._replay_by_request(request)
        record = await self._reload(send_id)
        try:
            await send_via_smtp(self._bulk.provider, built)
        except SmtpOutcomeUnknown as error:
            return await self._settle(record, state=SendState.UNKNOWN, reason=str(error))
        except SmtpNotSent as error:
            return await self._settle(record, state=SendState.FAILED, reason=error.reason)
        return await self._settle(record, state=SendState.SENT, reason="")

    async def _settle(self, record: SendRecord, *, state: SendState, reason: str) -> SendRecord:
        now = self._clock.now()
        async with self._db.write() as session:
            await store.update_send(
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
        return await self._reload(record.send_id)

    # -- shared ----------------------------------------------------------------------------------------------

    async def _attachments(self, request: SendRequest) -> list[store.StagedAttachment]:
        """The request's staged uploads; their total is checked before anything else happens (R14)."""
        ids = list(request.attachment_upload_ids)
        if not ids:
            return []
        if len(set(ids)) != len(ids):
            raise InvalidArgument(
                "an upload is named twice in attachment_upload_ids", field="attachment_upload_ids"
            )
        async with self._db.read() as session:
            sizes = await store.staged_sizes(session, request.location_id, ids, now=self._clock.now())
            missing = [upload_id for upload_id in ids if upload_id not in sizes]
            if missing:
                raise InvalidEmail(
                    "attachment_upload_ids", f"unknown or expired uploads {missing}: upload them again"
                )
            total = sum(sizes.values())
            limit = self._config.limits.max_attachment_bytes
            if total > limit:
                raise AttachmentsTooLarge("attachments", f"{total} bytes in total, the limit is {limit}")
            return await store.load_staged(session, request.location_id, ids)

    def _build(
        self,
        request: SendRequest,
        sender: EmailAddress,
        staged: list[store.StagedAttachment],
        now: dt.datetime,
        bcc: BccHandling,
    ) -> BuiltMessage:
        reply = None
        if request.reply_to_rfc_message_id:
            reply = ReplyTarget(
                message_id=request.reply_to_rfc_message_id, references=request.reply_references
            )
        email = OutgoingEmail(
            sender=sender,
            to=request.to,
            cc=request.cc,
            bcc=request.bcc,
            subject=request.subject,
            text_body=request.text_body,
            html_body=request.html_body,
            attachments=tuple(Attachment(a.filename, a.content_type, a.content) for a in staged),
            reply_to_message=reply,
            automatic=request.kind is SendKind.WORKFLOW,
        )
        return build_message(
            email,
            message_id=new_message_id(self._config.message_id_domain),
            date=now.replace(microsecond=0),
            limits=self._config.limits,
            bcc=bcc,
        )

    def _new_row(
        self, request: SendRequest, built: BuiltMessage, send_id: str, now: dt.datetime
    ) -> dict[str, object]:
        email = built.email
        recipients = dict.fromkeys(a.email for a in (*email.to, *email.cc, *email.bcc))
        return {
            "send_id": send_id,
            "location_id": request.location_id,
            "request_id": request.request_id,
            "kind": request.kind.value,
            "user_id": request.user_id,
            "connection_id": "",
            "mailbox_id": "",
            "mailbox_email": "",
            "ledger_key": "",
            "gmail_calls": 0,
            "reason": "",
            "error_reason": "",
            "rfc_message_id": built.message_id,
            "final_rfc_message_id": "",
            "gmail_message_id": "",
            "gmail_thread_id": "",
            "reply_gmail_thread_id": request.reply_gmail_thread_id,
            "subject": built.subject,
            "recipients": tuple(recipients),
            "message_date": now.replace(microsecond=0),
            "raw": built.raw,
            "created_at": now,
            "lease_owner": self._config.owner,
            "lease_expires_at": now + self._config.lease,
        }

    async def _reload(self, send_id: str) -> SendRecord:
        async with self._db.read() as session:
            record = await store.get_send(session, send_id)
        assert record is not None
        return record

    async def _replay_by_request(self, request: SendRequest) -> SendRecord:
        async with self._db.read() as session:
            existing = await store.send_by_request(session, request.location_id, request.request_id)
        assert existing is not None
        return await self._replay(existing)

    async def _replay(self, record: SendRecord) -> SendRecord:
        """The first request's outcome: waits while its live owner works, recovers it when the owner is gone."""
        deadline = self._clock.now() + self._config.replay_wait
        while record.state in store.UNSETTLED_STATES and record.next_step != NextStep.NOTHING.value:
            now = self._clock.now()
            owner_alive = record.lease_expires_at is not None and record.lease_expires_at > now
            if not owner_alive:
                record = await self.recover(record.send_id)
                if record.state == SendState.UNKNOWN.value or now >= deadline:
                    break
                continue
            if now >= deadline:
                break
            await self._sleep(_REPLAY_POLL_SECONDS)  # type: ignore[misc]
            record = await self._reload(record.send_id)
        if record.state == SendState.FAILED.value and record.error_reason == _QUOTA_REASON:
            assert record.retry_time is not None
            raise self._gmail_block_error(record.mailbox_id, record.retry_time)
        return record


def _require_ids(request: SendRequest) -> None:
    for name in ("request_id", "location_id", "user_id"):
        if not getattr(request, name):
            raise InvalidArgument(f"{name} is required", field=name)
