"""The send use case: an email from the CRM goes out once, through the user's Gmail (INDIVIDUAL) or the location's
SMTP provider (BULK, WORKFLOW, services.outbound.bulk_sending), and its outcome is recorded with its events (R6,
R10, R13, R14, R15).

An individual send is one transaction before Gmail (the send row SENDING, its ledger entry and the pending event)
and one after it (SENT with Gmail's ids and the Message-ID Gmail kept, and the sent event); nothing is read back
in between. A Gmail call without a definite answer, or one interrupted by a crash, is never repeated blindly: the
Sent folder is searched for the send's own id header first, and only a search made after Gmail's search index had
time proves the message absent and allows another call (services.outbound.domain.send_state).

Which process works on a send is its lease; a process that died is known at once (services.outbound.liveness),
so its sends are taken over as soon as a replayed request or the recovery loop looks at them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from services.outbound import events, store
from services.outbound.bulk_sending import BulkSender, BulkSending
from services.outbound.connections import SenderMailbox
from services.outbound.domain.email import EmailAddress, MessageLimits
from services.outbound.domain.errors import QuotaCause, QuotaExceeded
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
    NotInSentFolderYet,
    SendProgress,
    SendState,
    SentFolderUnavailable,
    advance,
    after_restart,
    new_send,
    search_window,
)
from services.outbound.drafts import SendRequest, build_email, new_row, require_ids, staged_attachments
from services.outbound.gmail_sends import (
    GmailMailboxes,
    KeptMessageId,
    SentFolderUnreadable,
    find_in_sent_folder,
    kept_message_id,
)
from services.outbound.ledger import SendLedger
from services.outbound.liveness import LeaseOnlyLiveness, ProcessLiveness, new_owner_id
from services.outbound.mime import BccHandling
from services.outbound.store import SendRecord
from services.runtime.clock import Clock, SystemClock
from services.runtime.db import Database
from services.runtime.errors import NotFound
from services.runtime.faults import fault_point
from services.runtime.gmail import GmailError, SendingLimitReached, SendOutcomeUnknown
from services.runtime.instruments import instruments

__all__ = ["BulkSender", "OutboundSender", "SendRequest", "SendingConfig"]

log = logging.getLogger(__name__)

# Crash points for the kill -9 tests (services.runtime.faults): after the send is recorded, right before Gmail's
# messages.send; after Gmail answered, before the answer is recorded.
BEFORE_GMAIL_SEND = "outbound.before_gmail_send"
AFTER_GMAIL_ANSWER = "outbound.after_gmail_answer"
# During a recovery: after the Sent folder was searched, before what was found is recorded.
AFTER_SENT_SEARCH = "outbound.after_sent_search"

_QUOTA_REASON = QuotaExceeded.reason
_REPLAY_POLL_SECONDS = 0.05


class SenderDirectory(Protocol):
    """What sending needs from the auth service (services.outbound.connections.AuthConnections)."""

    async def sender_for(self, location_id: str, user_id: str) -> SenderMailbox: ...

    async def access_token(self, mailbox_id: str) -> str: ...


@dataclass(frozen=True)
class SendingConfig:
    message_id_domain: str
    limits: MessageLimits = field(default_factory=MessageLimits)
    # How long one process owns a send in progress without renewing; a dead owner is known before (liveness).
    lease: dt.timedelta = dt.timedelta(minutes=5)
    # Gmail's search index lags behind what it accepted: a search proves a send absent only this long after
    # the call could last have been accepted.
    index_lag: dt.timedelta = dt.timedelta(seconds=60)
    # Our clock against Google's: the Sent-folder window is widened by this on both sides.
    clock_margin: dt.timedelta = dt.timedelta(seconds=120)
    # A request waits this long for the index inline; a longer wait is left to the recovery loop.
    inline_wait: dt.timedelta = dt.timedelta(seconds=30)
    # How soon a send whose Sent folder could not be read is searched again.
    unknown_retry: dt.timedelta = dt.timedelta(seconds=15)
    max_gmail_calls: int = 3
    # Longest time a replayed request waits for the process that owns the send to settle it.
    replay_wait: dt.timedelta = dt.timedelta(seconds=30)
    # Sends one process works on at once; more wait their turn instead of timing out on the connection pool.
    max_concurrent_sends: int = 32
    # How long the uploads a send used stay readable for threading (FetchSentAttachment).
    sent_attachment_retention: dt.timedelta = dt.timedelta(days=7)


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
        liveness: ProcessLiveness | None = None,
        bulk: BulkSender | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._directory = directory
        self._gmail = gmail
        self._config = config
        self._liveness = liveness or LeaseOnlyLiveness(new_owner_id())
        self.owner = self._liveness.owner
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._bulk = BulkSending(
            db,
            bulk,
            clock=self._clock,
            message_id_domain=config.message_id_domain,
            limits=config.limits,
            owner=self.owner,
            lease=config.lease,
        )
        # What this process last wrote per mailbox (account type), so the ledger row is only touched on a change.
        self._account_types_written: dict[str, str] = {}
        self._turns = asyncio.Semaphore(config.max_concurrent_sends)
        # The sends a coroutine of this process works on: the lease tells processes apart, this tells coroutines.
        self._working: set[str] = set()

    # -- entry points ----------------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendRecord:
        """Sends once per (location, request id); a repeated request answers with the first one's outcome."""
        require_ids(request)
        async with self._turns:
            async with self._db.read() as session:
                existing = await store.send_by_request(session, request.location_id, request.request_id)
            if existing is not None:
                return await self._replay(existing)
            if request.kind is SendKind.INDIVIDUAL:
                created = await self._send_individual(request)
            else:
                created = await self._bulk.send(request)
            if created is not None:
                instruments().sends.add(
                    1,
                    {
                        "mailsync.send.kind": request.kind.value.lower(),
                        "mailsync.send.state": str(created.state),
                    },
                )
            return created if created is not None else await self._replay_by_request(request)

    async def get(self, location_id: str, send_id: str) -> SendRecord:
        async with self._db.read() as session:
            record = await store.get_send(session, send_id)
        if record is None or record.location_id != location_id:
            raise NotFound(f"no send {send_id} in location {location_id}", send_id=send_id)
        return record

    async def recover(self, send_id: str, *, dead_owner: str | None = None) -> SendRecord:
        """Settles a send its process left unsettled (crash, or UNKNOWN): searches Sent before any new call.

        `dead_owner` is the process known dead that held it (its lease is taken at once, not after expiry)."""
        if send_id in self._working:
            # This process already works on it (a replay and the recovery loop at once): one at a time, or both
            # could prove it absent and call Gmail.
            return await self._reload(send_id)
        self._working.add(send_id)
        try:
            return await self._recover(send_id, dead_owner)
        finally:
            self._working.discard(send_id)

    async def _recover(self, send_id: str, dead_owner: str | None) -> SendRecord:
        now = self._clock.now()
        async with self._db.write() as session:
            record = await store.take_lease(
                session,
                send_id,
                owner=self.owner,
                now=now,
                until=now + self._config.lease,
                dead_owner=dead_owner,
            )
            if record is not None and record.next_step == NextStep.AWAIT_GMAIL_ANSWER.value:
                # Its process is gone (or its lease, longer than any Gmail call, ran out): whatever it sent was
                # accepted by now, which closes the window the Sent folder is searched in.
                previous_owner = dead_owner or "an expired lease"
                record = await store.update_send_returning(
                    session,
                    send_id,
                    next_step=NextStep.SEARCH_SENT_FOLDER.value,
                    call_ended_by=now,
                    reason=f"the process making the Gmail call ({previous_owner}) stopped before its answer",
                )
            current = None if record is not None else await store.get_send(session, send_id)
        if record is None:
            assert current is not None
            return current
        log.info(
            "recovering a send left unsettled",
            extra={
                "send_id": send_id,
                "mailbox_email": record.mailbox_email,
                "state": record.state,
                "next_step": record.next_step,
                "previous_owner": dead_owner or "",
            },
        )
        if record.kind != SendKind.INDIVIDUAL.value:
            return await self._bulk.settle(
                record, state=SendState.UNKNOWN, reason=record.reason or "SMTP outcome unknown"
            )
        return await self._resolve(record, after_restart(_progress(record)))

    async def recover_due(self, *, limit: int = 50) -> int:
        """One recovery pass: sends of processes known dead, then sends nobody holds whose time has come (a lease
        that ran out, a parked search). Returns how many it looked at."""
        now = self._clock.now()
        async with self._db.read() as session:
            owners = await store.lease_owners(session, now=now, other_than=self.owner)
        dead = await self._liveness.dead_among(owners) if owners else set()
        work: list[tuple[str, str | None]] = []
        if dead:
            async with self._db.read() as session:
                work += await store.sends_held_by(session, dead, limit=limit)
        async with self._db.read() as session:
            due = await store.sends_to_recover(session, now=now, limit=max(limit - len(work), 0))
        work += [(send_id, None) for send_id in due]
        for send_id, dead_owner in work:
            try:
                await self.recover(send_id, dead_owner=dead_owner)
            except Exception:
                log.exception("recovering a send failed", extra={"send_id": send_id})
        return len(work)

    async def confirm_message_ids(self, *, limit: int = 50) -> int:
        """Reads the Message-ID Gmail kept on sends whose Sent copy was not readable right after the send."""
        async with self._db.read() as session:
            pending = await store.sends_with_unconfirmed_message_id(
                session, sent_before=self._clock.now() - dt.timedelta(seconds=1), limit=limit
            )
        for record in pending:
            kept = await kept_message_id(
                self._gmail.client_for(record.mailbox_id), record.gmail_message_id, record.rfc_message_id
            )
            if not kept.confirmed:
                continue
            async with self._db.write() as session:
                await store.update_send(
                    session, record.send_id, final_rfc_message_id=kept.value, message_id_confirmed=True
                )
            log.info(
                "read the Message-ID Gmail kept on a send",
                extra={"send_id": record.send_id, "final_rfc_message_id": kept.value},
            )
        return len(pending)

    # -- individual: Gmail -----------------------------------------------------------------------------------

    async def _send_individual(self, request: SendRequest) -> SendRecord | None:
        now = self._clock.now()
        staged = await staged_attachments(self._db, request, self._config.limits, now)
        sender = await self._directory.sender_for(request.location_id, request.user_id)
        # Fetched before anything is recorded: a mailbox auth cannot serve is refused with nothing sent.
        await self._directory.access_token(sender.mailbox_id)
        await self._note_account_type(sender)
        now = self._clock.now()
        send_id = uuid.uuid4().hex
        built = build_email(
            request,
            EmailAddress(sender.mailbox_email, sender.display_name),
            staged,
            now,
            bcc=BccHandling.HEADER,
            message_id_domain=self._config.message_id_domain,
            limits=self._config.limits,
            send_id=send_id,
        )
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
        values = new_row(
            request, built, send_id, now, owner=self.owner, lease_until=now + self._config.lease
        ) | {
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
        self._working.add(send_id)
        try:
            async with self._db.write(brief=True) as session:
                if not await store.insert_send(session, values):
                    return None
                await self._admit(session, sender, key, len(built.envelope_recipients))
                await events.stage_pending(session, pending)
                if staged:
                    await store.keep_uploads_for_send(
                        session,
                        request.location_id,
                        [a.upload_id for a in staged],
                        send_id=send_id,
                        until=now + self._config.sent_attachment_retention,
                    )
            return await self._call_gmail(store.record_from_values(values), progress)
        finally:
            self._working.discard(send_id)

    async def _note_account_type(self, sender: SenderMailbox) -> None:
        """Tells the ledger the mailbox's account type when it changed, in a transaction of its own: writing the
        mailbox row inside the send's transaction would lock it there too (the admission locks it anyway, but
        the test of the ledger without that lock must see the race it shows)."""
        account_type = sender.account_type.value
        if self._account_types_written.get(sender.mailbox_id) == account_type:
            return
        async with self._db.write() as session:
            await self._ledger.set_account_type(
                session, mailbox_id=sender.mailbox_id, account_type=sender.account_type
            )
            # Auth's own per-mailbox limit, when it has one, counts as set explicitly.
            if sender.daily_send_limit:
                await self._ledger.set_daily_limit(
                    session, mailbox_id=sender.mailbox_id, daily_limit=sender.daily_send_limit
                )
        self._account_types_written[sender.mailbox_id] = account_type

    async def _admit(self, session: AsyncSession, sender: SenderMailbox, key: str, recipients: int) -> None:
        await self._ledger.admit(
            session,
            mailbox_id=sender.mailbox_id,
            idempotency_key=key,
            recipients=recipients,
            mailbox_email=sender.mailbox_email,
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
            return await self._after_no_answer(record, advance(progress, GmailNoAnswer(error.message)))
        except GmailError as error:
            return await self._settle_refused(record, advance(progress, GmailRefused(error.message)))
        except Exception as error:
            # Anything else after the request may have left (a bug, a cancelled call) is an unknown outcome.
            log.exception("unexpected failure of messages.send")
            return await self._after_no_answer(record, advance(progress, GmailNoAnswer(repr(error))))
        gmail = GmailIds(message_id=answer["id"], thread_id=answer.get("threadId", ""))
        kept = await kept_message_id(client, gmail.message_id, record.rfc_message_id)
        fault_point(AFTER_GMAIL_ANSWER)
        return await self._record_sent(record, advance(progress, GmailAccepted(gmail)), kept)

    async def _still_owned(self, record: SendRecord) -> bool:
        """Renews this process's lease right before a Gmail call; False when another process holds the send."""
        now = self._clock.now()
        held_until = record.lease_expires_at
        if record.lease_owner == self.owner and held_until and held_until - now > self._config.lease / 2:
            # Nobody takes a live process's send over before its lease ends, so a lease this fresh needs no
            # round trip.
            return True
        async with self._db.write() as session:
            return await store.renew_lease(
                session, record.send_id, owner=self.owner, until=now + self._config.lease
            )

    async def _record_sent(
        self, record: SendRecord, progress: SendProgress, kept: KeptMessageId
    ) -> SendRecord:
        assert progress.gmail is not None
        now = self._clock.now()
        async with self._db.write(brief=True) as session:
            settled = await store.update_send_returning(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                state=SendState.SENT.value,
                next_step=NextStep.NOTHING.value,
                gmail_calls=progress.gmail_calls,
                reason="",
                gmail_message_id=progress.gmail.message_id,
                gmail_thread_id=progress.gmail.thread_id,
                final_rfc_message_id=kept.value,
                message_id_confirmed=kept.confirmed,
                sent_at=now,
                raw=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            if settled is not None:
                assert record.pending_event is not None
                await events.stage_sent(
                    session,
                    record.pending_event,
                    gmail_message_id=progress.gmail.message_id,
                    gmail_thread_id=progress.gmail.thread_id,
                    final_rfc_message_id=kept.value,
                    sent_time=now,
                )
        if settled is None:
            current = await self._reload(record.send_id)
            if current.gmail_message_id != progress.gmail.message_id:
                # Another process settled the send with another copy: Gmail has this one twice.
                log.error(
                    "a send was settled with another Gmail message than the one this process saw",
                    extra={
                        "send_id": record.send_id,
                        "recorded": current.gmail_message_id,
                        "seen": progress.gmail.message_id,
                    },
                )
            return current
        return settled

    # -- a Gmail call without a definite answer ----------------------------------------------------------------

    async def _after_no_answer(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        """The call ended without an answer: it can have been accepted up to now, not later."""
        now = self._clock.now()
        async with self._db.write() as session:
            updated = await store.update_send_returning(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self.owner,
                next_step=progress.next_step.value,
                reason=progress.reason,
                call_ended_by=now,
                lease_expires_at=now + self._config.lease,
            )
        if updated is None:
            return await self._reload(record.send_id)
        return await self._resolve(updated, progress)

    async def _resolve(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        """From SEARCH_SENT_FOLDER: found -> SENT; proven absent -> one more call; not yet provable -> searched
        again once the index had time; unreadable -> UNKNOWN, searched again later."""
        while True:
            if progress.next_step is NextStep.CALL_GMAIL:
                progress = advance(progress, GmailCallStarted())
                owned = await self._record_call_started(record, progress)
                if owned is None:
                    return await self._reload(record.send_id)
                return await self._call_gmail(owned, progress)
            if progress.next_step is not NextStep.SEARCH_SENT_FOLDER:
                raise AssertionError(f"cannot resolve a send at {progress.next_step}")
            now = self._clock.now()
            window = search_window(
                call_started_at=record.call_started_at or record.created_at,
                call_ended_by=record.call_ended_by or now,
                clock_margin=self._config.clock_margin,
                index_lag=self._config.index_lag,
            )
            try:
                copy = await find_in_sent_folder(
                    self._gmail.client_for(record.mailbox_id),
                    send_id=record.send_id,
                    rfc_message_id=record.rfc_message_id,
                    window=window,
                    already_claimed=functools.partial(self._claimed, record.mailbox_id),
                )
            except SentFolderUnreadable as error:
                progress = advance(progress, SentFolderUnavailable(str(error)))
                return await self._park(record, progress, until=now + self._config.unknown_retry)
            fault_point(AFTER_SENT_SEARCH)
            if copy is not None:
                log.info(
                    "found a send of unknown outcome in the Sent folder",
                    extra={"send_id": record.send_id, "gmail_message_id": copy.gmail.message_id},
                )
                kept = KeptMessageId(copy.rfc_message_id or record.rfc_message_id, confirmed=True)
                return await self._record_sent(record, advance(progress, FoundInSentFolder(copy.gmail)), kept)
            if window.proves_absence(now):
                log.info(
                    "a send of unknown outcome is not in the Sent folder: it is sent again",
                    extra={"send_id": record.send_id, "gmail_calls": progress.gmail_calls},
                )
                progress = advance(progress, NotInSentFolder(), max_gmail_calls=self._config.max_gmail_calls)
                if progress.state is SendState.FAILED:
                    return await self._settle_refused(record, progress)
                continue
            reason = f"not in the Sent folder yet; Gmail's search index is asked again at {window.proof_time:%H:%M:%S}Z"
            progress = advance(progress, NotInSentFolderYet(reason))
            wait = window.proof_time - now
            if wait > self._config.inline_wait:
                return await self._park(record, progress, until=window.proof_time)
            renewed = await self._hold_while_waiting(record, progress, until=window.proof_time)
            if renewed is None:
                return await self._reload(record.send_id)
            record = renewed
            await self._sleep(wait.total_seconds())  # type: ignore[misc]

    async def _claimed(self, mailbox_id: str, gmail_message_ids: list[str]) -> set[str]:
        async with self._db.read() as session:
            return await store.claimed_gmail_messages(session, mailbox_id, gmail_message_ids)

    async def _hold_while_waiting(
        self, record: SendRecord, progress: SendProgress, *, until: dt.datetime
    ) -> SendRecord | None:
        """Keeps the send through an inline wait (None when another process holds it now)."""
        async with self._db.write() as session:
            return await store.update_send_returning(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self.owner,
                state=progress.state.value,
                reason=progress.reason,
                lease_expires_at=until + self._config.lease,
            )

    async def _record_call_started(self, record: SendRecord, progress: SendProgress) -> SendRecord | None:
        """Records the next call while this process still holds the send (None when another took it over: a slow
        search outlived the lease, so its "not there" may already be stale)."""
        now = self._clock.now()
        async with self._db.write() as session:
            return await store.update_send_returning(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self.owner,
                state=progress.state.value,
                next_step=progress.next_step.value,
                gmail_calls=progress.gmail_calls,
                reason="",
                call_started_at=now,
                call_ended_by=None,
                lease_expires_at=now + self._config.lease,
            )

    async def _park(self, record: SendRecord, progress: SendProgress, *, until: dt.datetime) -> SendRecord:
        """Lets go of the send until `until`; then the recovery loop of whichever process searches again."""
        async with self._db.write() as session:
            parked = await store.update_send_returning(
                session,
                record.send_id,
                only_if_state=store.UNSETTLED_STATES,
                only_if_owner=self.owner,
                state=progress.state.value,
                next_step=progress.next_step.value,
                reason=progress.reason,
                lease_owner=None,
                lease_expires_at=until,
            )
        log.info(
            "a send of unknown outcome waits",
            extra={"send_id": record.send_id, "state": progress.state.value, "until": until.isoformat()},
        )
        return parked if parked is not None else await self._reload(record.send_id)

    async def _settle_refused(self, record: SendRecord, progress: SendProgress) -> SendRecord:
        """Gmail certainly did not send it: the slot goes back to the window and `failed` is published."""
        now = self._clock.now()
        async with self._db.write() as session:
            settled = await store.update_send_returning(
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
            if settled is not None:
                await self._ledger.release(session, idempotency_key=record.ledger_key)
                await events.stage_failed(
                    session,
                    send_id=record.send_id,
                    mailbox_id=record.mailbox_id,
                    location_id=record.location_id,
                    reason=progress.reason,
                    fail_time=now,
                )
        return settled if settled is not None else await self._reload(record.send_id)

    async def _gmail_blocked(self, record: SendRecord, error: SendingLimitReached) -> QuotaExceeded:
        """Gmail's own sending limit (R14): closes the mailbox until Gmail's time; returns the refusal to raise."""
        now = self._clock.now()
        until = error.retry_at or gmail_block_end(error.message, now)
        async with self._db.write() as session:
            until = await self._ledger.record_gmail_block(
                session, mailbox_id=record.mailbox_id, blocked_until=until
            )
            settled = await store.update_send_returning(
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
            if settled is not None:
                await self._ledger.release(session, idempotency_key=record.ledger_key)
                await events.stage_failed(
                    session,
                    send_id=record.send_id,
                    mailbox_id=record.mailbox_id,
                    location_id=record.location_id,
                    reason=f"Gmail's sending limit until {until.isoformat()}",
                    fail_time=now,
                )
        return self._gmail_block_error(record, until)

    def _gmail_block_error(self, record: SendRecord, until: dt.datetime) -> QuotaExceeded:
        return QuotaExceeded(
            mailbox_id=record.mailbox_id,
            mailbox_email=record.mailbox_email,
            retry_time=until,
            cause=QuotaCause.GMAIL_BLOCK,
            daily_limit=self._ledger.default_daily_limit,
        )

    # -- replays ---------------------------------------------------------------------------------------------

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
        """The first request's outcome: waits while its live owner works, recovers it at once when its owner is
        dead or nobody holds it any more."""
        deadline = self._clock.now() + self._config.replay_wait
        next_liveness_check = self._clock.now()
        while record.state in store.UNSETTLED_STATES and record.next_step != NextStep.NOTHING.value:
            now = self._clock.now()
            lease_live = record.lease_expires_at is not None and record.lease_expires_at > now
            owner_dead = False
            if record.lease_owner not in (None, self.owner) and now >= next_liveness_check:
                # Once a second at most: the owner's lock is a file or a database query away.
                next_liveness_check = now + dt.timedelta(seconds=1)
                owner_dead = record.lease_owner in await self._liveness.dead_among({record.lease_owner})
            if owner_dead or not lease_live:
                record = await self.recover(
                    record.send_id, dead_owner=record.lease_owner if owner_dead else None
                )
                if record.state == SendState.UNKNOWN.value or now >= deadline:
                    break
                if record.lease_owner is None and record.next_step != NextStep.NOTHING.value:
                    # Parked until Gmail's index had time: the recovery loop finishes it, not this request.
                    break
                continue
            if now >= deadline:
                break
            await self._sleep(_REPLAY_POLL_SECONDS)  # type: ignore[misc]
            record = await self._reload(record.send_id)
        if record.state == SendState.FAILED.value and record.error_reason == _QUOTA_REASON:
            assert record.retry_time is not None
            raise self._gmail_block_error(record, record.retry_time)
        return record
